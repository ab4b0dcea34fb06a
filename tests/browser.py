"""Helpers for the dash[testing] browser tests: reads done in one step, and actions retried when Dash re-renders
the element under them."""

from __future__ import annotations

import time

from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

# How long a test waits for a background job's result: long enough for the slowest machine under load (the job
# server's first start imports the analysis libraries), so only a job that never ends reaches it.
JOB_DEADLINE_S = 300


def when_stable(action, tries: int = 20):
    """Do a browser action, again if Dash re-rendered the element under it in the meantime (or covers it, while it
    does, with the spinner of a busy component)."""
    for _ in range(tries - 1):
        try:
            return action()
        except (StaleElementReferenceException, ElementClickInterceptedException):
            time.sleep(0.1)
    return action()


def text_of(dash_duo, selector: str) -> str:
    """An element's text, read in one step (Dash may replace the element between a find and a read)."""
    return dash_duo.driver.execute_script(
        "const element = document.querySelector(arguments[0]); return element ? element.innerText : '';", selector)


def on_graph(dash_duo, selector: str, expression: str):
    """Evaluate a JavaScript expression on a plotly graph div `gd` (decoded values are in gd._fullData);
    None while the graph is not drawn yet."""
    return dash_duo.driver.execute_script(
        f"try {{ const gd = document.querySelector('{selector} .js-plotly-plot'); return {expression}; }} "
        "catch (notDrawnYet) { return null; }")


def drag_top_left_quarter(dash_duo, graph: str) -> None:
    """Drag a box on the graph `graph` (a CSS selector of its dcc.Graph, whose drag mode is select) from near its
    top-left corner to just short of its middle: on a 4 x 4 patch grid, the top-left 2 x 2 patches."""
    from dash.testing.wait import until
    from selenium.webdriver.common.action_chains import ActionChains

    area = dash_duo.wait_for_element(f"{graph} .nsewdrag", timeout=20)
    until(lambda: on_graph(dash_duo, graph, "gd.layout.dragmode") == "select", timeout=20)
    width, height = area.size["width"], area.size["height"]
    ActionChains(dash_duo.driver).move_to_element(area).move_by_offset(int(-width / 2 + 4), int(-height / 2 + 4)) \
        .click_and_hold().move_by_offset(int(width / 4), int(height / 4)).move_by_offset(
            int(width / 4) - 10, int(height / 4) - 10).release().perform()


def show_tsne(dash_duo, url: str, dataset: str, perplexity: int, timeout_s: float = JOB_DEADLINE_S) -> None:
    """Open the clustering page of a served dashboard on a t-SNE and wait until the scatter shows it."""
    from dash.testing.wait import until

    dash_duo.driver.get(f"{url}/clustering?dataset={dataset}&projection=tsne&perplexity={perplexity}")
    until(lambda: on_graph(dash_duo, "#clustering-scatter", "gd.layout.xaxis.title.text") == "t-SNE 1",
          timeout=timeout_s)
