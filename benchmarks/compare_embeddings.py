"""Server-side times of the compare page: the background job that averages every patch grid, then what each request
does (a reference's two top-K lists, the summary over 200 references, and, with --other, the match by content hash
with the two K-Means and the top-K in each dataset). Each answer is the median of --repeats runs, without the cache.

    dinoscope samples /tmp/cmp/photos
    SMALL="--model vit_small_patch14_reg4_dinov2.lvd142m --random-weights"
    dinoscope index /tmp/cmp/photos --db /tmp/cmp/c.db $SMALL --image-size 56 --dataset s56
    dinoscope index /tmp/cmp/photos --db /tmp/cmp/c.db $SMALL --image-size 112 --dataset s112
    python benchmarks/compare_embeddings.py --db /tmp/cmp/c.db --dataset s56 --other s112

    dinoscope synthetic big --count 10000 --grid 16 --db /tmp/cmp/big.db     # ViT-B/14 at 224: 16 x 16 x 768
    dinoscope synthetic big2 --count 10000 --db /tmp/cmp/big.db               # the same files (the same seed)
    python benchmarks/compare_embeddings.py --db /tmp/cmp/big.db --dataset big --other big2 --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from dashboard.compare_view import agreement_summary, compute_mean_patches, cross_match, cross_retrieval, side_by_side
from dashboard.data import DatasetStore
from db.engine import resolve_url

sys.path.insert(0, str(Path(__file__).parent))
from dashboard_queries import median_s  # a sibling script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--other", help="a second dataset of the same files")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    store = DatasetStore(resolve_url(args.db))
    view = store.view(args.dataset)
    rows = []
    started = time.perf_counter()
    patches = compute_mean_patches(store, view)
    rows.append((f"mean-patch embeddings of {len(patches.rows):,} images (the background job, once)",
                 time.perf_counter() - started))
    reference = int(view.image_ids[len(view) // 2])
    for against in ("patches", "concat"):
        rows.append((f"top-{args.k} by CLS and by {against}",
                     median_s(lambda a=against: side_by_side(store, view, patches, reference, args.k, a),
                              args.repeats)))
    rows.append((f"summary at K={args.k} (overlap and precision, 200 references)",
                 median_s(lambda: agreement_summary(view, patches, args.k), args.repeats)))
    if args.other:
        second = store.view(args.other)
        rows.append((f"match by hash and K-Means k={args.clusters} on each",
                     median_s(lambda: cross_match(store, view, second, args.clusters), args.repeats)))
        match = cross_match(store, view, second, args.clusters)
        rows.append((f"top-{args.k} in each dataset ({len(match.matched):,} matched)",
                     median_s(lambda: cross_retrieval(view, second, match, reference, args.k), args.repeats)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"dataset {args.dataset}: {len(view):,} images; peak resident memory {peak:,.0f} MiB")
    print("| answer | time |\n| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:,.0f} ms |" if seconds < 1 else f"| {name} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
