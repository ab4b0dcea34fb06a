"""The limits on image sets as the server's operator sets them: `serve --upload-limit NAME=VALUE` and
$DINOSCOPE_UPLOAD_LIMITS, parsed by `dashboard.settings.parse_upload_limits`."""

from __future__ import annotations

import pytest

from dashboard import cli
from dashboard.image_sets import UploadLimits
from dashboard.settings import Settings, UploadSettings, describe_upload_limits, parse_upload_limits
from tests.conftest import run_cli

NAMES = "file, files, set, user, pixels, zip, zip-members"


@pytest.mark.parametrize(("item", "field", "value"), [
    ("file=3MiB", "file_bytes", 3 * 1024**2),
    ("files=250", "files_per_set", 250),
    ("set=2GB", "set_bytes", 2 * 1000**3),
    ("user=2GiB", "user_bytes", 2 * 1024**3),
    ("pixels=24000000", "image_pixels", 24_000_000),
    ("zip=800MB", "zip_bytes", 800 * 1000**2),
    ("zip-members=9000", "zip_members", 9000),
])
def test_each_name_sets_its_limit_and_leaves_the_others_at_their_defaults(item, field, value):
    limits = parse_upload_limits([item])
    assert getattr(limits, field) == value
    assert getattr(limits, field) != getattr(UploadLimits(), field)
    others = {name for name in UploadLimits.__dataclass_fields__ if name != field}
    assert {name: getattr(limits, name) for name in others} == {name: getattr(UploadLimits(), name) for name in others}


@pytest.mark.parametrize(("value", "size"), [
    ("1234", 1234), ("1234B", 1234), ("5KB", 5000), ("5KiB", 5120), ("7MB", 7_000_000), ("7MiB", 7 * 1024**2),
    ("3GB", 3_000_000_000), ("3GiB", 3 * 1024**3), ("1.5GB", 1_500_000_000), ("2 mib", 2 * 1024**2),
])
def test_sizes_take_decimal_and_binary_units(value, size):
    assert parse_upload_limits([f"set={value}"]).set_bytes == size


def test_pixels_may_be_counted_in_millions():
    assert parse_upload_limits(["pixels=50M"]).image_pixels == 50_000_000
    assert parse_upload_limits(["pixels=12.5M"]).image_pixels == 12_500_000


def test_items_are_comma_separated_within_a_value_and_none_is_the_defaults():
    limits = parse_upload_limits(["file=20MiB, user=2GiB,pixels=50M", "files=10"])
    assert (limits.file_bytes, limits.user_bytes, limits.image_pixels, limits.files_per_set) == (
        20 * 1024**2, 2 * 1024**3, 50_000_000, 10)
    assert parse_upload_limits([]) == parse_upload_limits([""]) == UploadLimits()


@pytest.mark.parametrize(("item", "message"), [
    ("bogus=1", f"'bogus=1' names no limit: write NAME=VALUE, NAME one of {NAMES}"),
    ("file", f"'file' names no limit: write NAME=VALUE, NAME one of {NAMES}"),
    ("file=20XB", "'file=20XB': unknown unit 'XB'; the value is a number of bytes, with an optional unit B, KB"),
    ("zip=lots", "'zip=lots': the value is not a number of bytes"),
    ("set=1.5", "'set=1.5': the value is not a number of bytes"),
    ("files=5k", "'files=5k': unknown unit 'k'; the value is a whole number"),
    ("files=2.5", "'files=2.5': the value is not a whole number"),
    ("zip-members=1MB", "'zip-members=1MB': unknown unit 'MB'; the value is a whole number"),
    ("pixels=50MiB", "'pixels=50MiB': unknown unit 'MiB'; the value is a whole number, or millions with M (50M)"),
    ("user=0", "'user=0': a limit must be above zero"),
    ("user=0GiB", "'user=0GiB': a limit must be above zero"),
    ("files=-3", "'files=-3': a limit must be above zero"),
    ("set=-1GB", "'set=-1GB': a limit must be above zero"),
    ("file=1MB,file=2MB", "'file=2MB': the limit file is given twice"),
])
def test_a_bad_item_is_refused_by_name(item, message):
    with pytest.raises(ValueError) as refused:
        parse_upload_limits([item])
    assert str(refused.value).startswith(message)


def test_the_defaults_are_described_as_the_option_takes_them():
    described = describe_upload_limits(UploadLimits())
    assert described == "file=20MiB, files=1000, set=500MiB, user=1GiB, pixels=50M, zip=500MiB, zip-members=5000"
    assert parse_upload_limits([described]) == UploadLimits()


def test_upload_settings_read_the_limits_from_the_environment_unless_given(tmp_path, monkeypatch):
    db_url = f"sqlite:///{tmp_path / 'sets.db'}"
    monkeypatch.delenv("DINOSCOPE_UPLOAD_LIMITS", raising=False)
    assert UploadSettings.from_env(db_url).limits == UploadLimits()

    monkeypatch.setenv("DINOSCOPE_UPLOAD_LIMITS", "file=5MB,user=2GiB,pixels=20M")
    assert UploadSettings.from_env(db_url).limits == UploadLimits(file_bytes=5_000_000, user_bytes=2 * 1024**3,
                                                                  image_pixels=20_000_000)
    given = UploadLimits(files_per_set=3)
    assert UploadSettings.from_env(db_url, limits=given).limits == given
    assert Settings.from_env(db_url, tmp_path / "cache").uploads.limits.user_bytes == 2 * 1024**3

    monkeypatch.setenv("DINOSCOPE_UPLOAD_LIMITS", "user=lots")
    with pytest.raises(ValueError, match="^DINOSCOPE_UPLOAD_LIMITS: 'user=lots': the value is not a number of bytes"):
        UploadSettings.from_env(db_url)


def test_settings_keep_the_limits_when_they_put_the_uploads_folder_by_the_database(tmp_path):
    limits = UploadLimits(zip_members=10)
    settings = Settings(f"sqlite:///{tmp_path / 'sets.db'}", tmp_path / "cache",
                        uploads=UploadSettings(allowed=True, limits=limits))
    assert settings.uploads == UploadSettings(True, tmp_path / "uploads", limits)


@pytest.fixture
def served(monkeypatch) -> list[Settings]:
    """What `serve` would have served with, in place of a server."""
    settings = []
    monkeypatch.setattr(cli, "serve_dashboard", lambda found, *_args: settings.append(found))
    monkeypatch.delenv("DINOSCOPE_UPLOAD_LIMITS", raising=False)
    return settings


def test_serve_passes_the_options_limits_to_the_dashboard(served, tmp_path):
    run_cli("serve", "--db", tmp_path / "sets.db", "--upload-limit", "file=5MB", "--upload-limit", "user=2GiB,files=9")
    assert [found.uploads.limits for found in served] == [
        UploadLimits(file_bytes=5_000_000, user_bytes=2 * 1024**3, files_per_set=9)]


def test_serve_reads_the_limits_from_the_environment(served, tmp_path, monkeypatch):
    monkeypatch.setenv("DINOSCOPE_UPLOAD_LIMITS", "zip=1GB, zip-members=100")
    run_cli("serve", "--db", tmp_path / "sets.db")
    assert [found.uploads.limits for found in served] == [UploadLimits(zip_bytes=1_000_000_000, zip_members=100)]


def test_serve_refuses_an_unknown_limit_before_serving(served, tmp_path):
    result = run_cli("serve", "--db", tmp_path / "sets.db", "--upload-limit", "bogus=1", expect=2)
    assert f"Invalid value for '--upload-limit': 'bogus=1' names no limit: write NAME=VALUE, NAME one of {NAMES}" in (
        result.output)
    assert served == []
