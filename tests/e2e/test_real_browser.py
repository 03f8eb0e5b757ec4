"""The feature browser as a user meets it: JupyterLab in headless Chromium, driven through Selenium.

One JupyterLab server (127.0.0.1, no token, a fresh root and workspace) and one browser serve the module. The
browser notebook ``03c_browser`` runs on the smoke run (``configs/smoke.toml``), reusing the artifacts the
notebook tests built in this session's runs folder. Each state is saved as a screenshot under the repository's
``runs/browser-tests/`` (git-ignored; replaced by each session). The static export is opened from disk (``file://``), with no server behind it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

import realbrowser as rb
from thinkdiff import notebooks, paths
from thinkdiff.browser import COLUMN_NAMES

pytestmark = pytest.mark.browser

NOTEBOOK = "03c_browser"
PARAMETERS = {"RUN": "smoke", "N_CARDS": 4}      # as in the notebook tests, so their cached artifacts serve
RUN_ALL_TIMEOUT = 300                            # s: the notebook on cached artifacts takes ~20 s here
STEP_TIMEOUT = 60                                # s: one control change and its kernel round trip
CONTROLS_WIDTH = (320, 340)                      # px: the controls column is fixed at 330 px

# What ``Lab.reset`` runs in the notebook's kernel (``fb``: the notebook's FeatureBrowser): the default filters,
# then the first match on show.
RESET_CODE = ("fb._batch = True\nfb.category.value = 'any'\nfb.sort_by.value = 'relative_norm'\n"
              "fb.nrn.value = (0.0, 1.0)\nfb.min_score.value = fb.min_score.min\nfb.min_auroc.value = 0.0\n"
              "fb.min_freq.value = 10.0 ** fb.min_freq.min\nfb._batch = False\n"
              "fb.refresh(keep_current=False)")
# A notebook reopened while its kernel runs renders its widget outputs once before the widget manager has restored
# the kernel's models (logging this), then again after (jupyter-widgets/ipywidgets#3231); the page works.
RELOAD_TRANSIENT = "Error: widget model not found"
CARD = ".thinkdiff-browser .thinkdiff-cardpane .thinkdiff-card[id^=latent-]"
JS_PANEL = "const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;"


def _control(driver, kind: str, label: str):
    """The input element of the browser's control labelled ``label`` (kind: dropdown, text, slider)."""
    xpath = {"dropdown": "//div[contains(@class,'widget-dropdown')][label[normalize-space()='{0}']]//select",
             "text": "//div[contains(@class,'widget-inline-hbox')][label[normalize-space()='{0}']]//input",
             "slider": "//div[contains(@class,'widget-slider')][label[normalize-space()='{0}']]"
                       "//div[contains(@class,'widget-readout')]"}[kind].format(label)
    return driver.find_element("xpath", "//div[contains(@class,'thinkdiff-controls')]" + xpath)


class Lab:
    """The JupyterLab page with the browser notebook, and what the tests measure on it."""

    def __init__(self, driver, url: str, shots: Path):
        self.driver, self.url, self.shots, self.n_shots = driver, url, shots, 0
        self.n_opened = 0            # times the notebook page was (re)opened

    def js(self, code: str):
        return self.driver.execute_script(code)

    def shot(self, name: str, element=None):
        """Save the page (or one element) as ``NN-name.png`` in the run folder's screenshot folder."""
        self.n_shots += 1
        path = self.shots / f"{self.n_shots:02d}-{name}.png"
        (element.screenshot if element is not None else self.driver.save_screenshot)(str(path))
        return path

    def wait_kernel_idle(self, timeout: float):
        rb.wait_for(lambda: self.js(JS_PANEL + " return !!(p && p.sessionContext && p.sessionContext.session && "
                                    "p.sessionContext.session.kernel && p.sessionContext.session.kernel.status === 'idle')"),
                    timeout, "the notebook's kernel to be idle")

    def open_notebook(self, timeout: float = 120):
        self.n_opened += 1
        self.driver.get(f"{self.url}/lab/tree/{NOTEBOOK}.ipynb")
        rb.wait_for(lambda: self.js(JS_PANEL + f" return !!(p && p.context && p.context.path === '{NOTEBOOK}.ipynb' "
                                    "&& p.content && p.content.widgets.length > 0)"), timeout, "the notebook to open")
        self.wait_kernel_idle(timeout)

    def run_all(self, timeout: float):
        self.js("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        done = (JS_PANEL + " const cells = p.content.widgets.filter(c => c.model.type === 'code');"
                " const k = p.sessionContext.session.kernel;"
                " return cells.every(c => c.model.executionCount !== null && !c.promptNode.textContent.includes('*'))"
                " && k.status === 'idle';")
        rb.wait_for(lambda: self.js(done), timeout, "every cell of the notebook to run")

    def error_outputs(self) -> list[str]:
        """Error outputs of the notebook's cells, and widget render errors on the page.

        A progress bar (transformers' "Loading weights") closes its widget when it finishes; a page reopened later
        cannot draw it again and says "Error displaying widget" in its place (upstream behaviour, not a fault of
        the browser): such outputs, recognisable by their plain-text fallback, are left out."""
        errs = self.js(JS_PANEL + " return p.content.widgets.filter(c => c.model.type === 'code')"
                       ".flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')"
                       ".map(o => o.ename + ': ' + o.evalue);")
        shown = self.js(JS_PANEL + " return p.content.widgets.filter(c => c.model.type === 'code').flatMap(c =>"
                        " c.outputArea.widgets.map((w, i) => [w.node.innerText, i < c.model.outputs.length ?"
                        " ((c.model.outputs.get(i).toJSON().data || {})['text/plain'] || '') : '']));")
        bad = [text for text, plain in shown if "Error displaying widget" in text
               and not re.search(r"\d+%\|.*\|", str(plain))]
        return errs + [line for text in bad for line in text.splitlines() if "Error displaying widget" in line]

    def card_id(self) -> int | None:
        cards = self.driver.find_elements("css selector", CARD)
        shown = [c for c in cards if c.is_displayed()]
        return int(shown[0].get_attribute("id").split("-")[1]) if shown else None

    def listed(self) -> list[str]:
        sel = self.driver.find_element("css selector", ".thinkdiff-controls select[size]")
        return [o.text for o in sel.find_elements("tag name", "option")]

    def count_text(self) -> str:
        return self.driver.find_element("css selector", ".thinkdiff-controls .thinkdiff-status").text

    def card_pane_text(self) -> str:
        return self.driver.find_element("css selector", ".thinkdiff-browser .thinkdiff-cardpane").text

    def measure_controls(self) -> float:
        return self.js("return document.querySelector('.thinkdiff-browser .thinkdiff-controls').getBoundingClientRect().width;")

    def console_errors(self) -> list[str]:
        """Console errors since the last call, less the one a reopened page logs by design (``RELOAD_TRANSIENT``)."""
        return rb.console_errors(self.driver, ignore=(RELOAD_TRANSIENT,) if self.n_opened > 1 else ())

    def on_notebook(self) -> bool:
        return self.driver.current_url.startswith(self.url) and bool(
            self.js(JS_PANEL + f" return !!(p && p.context && p.context.path === '{NOTEBOOK}.ipynb');"))

    def reset(self):
        """The browser's default state, whatever an earlier test left: the notebook page open (a test may have
        navigated away), every filter open, category "any", the first match on show. Set in the kernel, then
        waited for on the page, so no test relies on another having run before it."""
        left = self.console_errors()
        assert left == [], f"console errors left by the test before: {left}"
        if not self.on_notebook():
            self.open_notebook()
            self.until(lambda: self.card_id() is not None, "the browser's card after reopening the notebook")
        self.wait_kernel_idle(STEP_TIMEOUT)
        self.js(JS_PANEL + " p.sessionContext.session.kernel.requestExecute({code: " + json.dumps(RESET_CODE) + "});")
        self.wait_kernel_idle(STEP_TIMEOUT)
        self.until(lambda: self.card_id() is not None and self.listed()
                   and self.listed()[0].split()[0] == str(self.card_id())
                   and self.count_text().endswith(f"sorted by {COLUMN_NAMES['relative_norm']}"),
                   "the browser's default state after a reset")

    def browser_element(self):
        el = self.driver.find_element("css selector", ".thinkdiff-browser")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", el)
        return el

    def until(self, predicate, what: str):
        return rb.wait_for(predicate, STEP_TIMEOUT, what)


@pytest.fixture(scope="module")
def lab_page(test_runs, tmp_path_factory):
    """JupyterLab with the browser notebook open in headless Chromium, every cell run."""
    import papermill as pm

    why = rb.missing_browser()
    if why:   # reached only under CI=true (elsewhere conftest skips): a missing browser fails the run
        pytest.fail(f"CI=true but the real-browser tests cannot run: {why}; install with: {rb.ENABLE_COMMAND}")
    root = tmp_path_factory.mktemp("lab")
    pm.execute_notebook(str(notebooks.notebook_path(NOTEBOOK)), str(root / f"{NOTEBOOK}.ipynb"), parameters=PARAMETERS,
                        prepare_only=True, kernel_name="python3")
    shots = paths.REPO_ROOT / "runs" / "browser-tests"      # kept after the session (pytest's temp folders rotate)
    shutil.rmtree(shots, ignore_errors=True)
    paths.ensure_writable(shots)
    rb.REPORT["screenshots"] = str(shots)
    with rb.jupyterlab(root) as url:
        driver = rb.chrome(width=1500, height=1900)
        try:
            page = Lab(driver, url, shots)
            page.open_notebook()
            page.run_all(RUN_ALL_TIMEOUT)
            page.until(lambda: page.card_id() is not None, "the browser to show a card")
            yield page
        finally:
            driver.quit()


@pytest.fixture
def lab(lab_page):
    """The page in its default state for each test (``Lab.reset``)."""
    lab_page.reset()
    return lab_page


def test_notebook_runs_in_jupyterlab_and_shows_a_card_by_default(lab):
    assert lab.error_outputs() == []
    assert lab.console_errors() == []
    card = lab.card_id()
    assert card is not None and lab.listed() and lab.listed()[0].split()[0] == str(card)
    assert re.search(r"\d[\d,]* of \d[\d,]* latents match", lab.count_text())   # counts print with thousands separators
    pane = lab.card_pane_text()
    for section in ("WHERE IT SITS", "ACTIVITY", "WHAT IT MEANS", "TOP ACTIVATING CONTEXTS", "RELATED LATENTS"):
        assert section in pane.upper()
    assert " nan" not in pane and "\nnan" not in pane
    assert CONTROLS_WIDTH[0] <= lab.measure_controls() <= CONTROLS_WIDTH[1]
    lab.shot("default-card", lab.browser_element())


def test_card_css_stays_inside_the_widget(lab):
    """The card's style must not reach JupyterLab's own page: body keeps its width and margins."""
    body = lab.js("const s = getComputedStyle(document.body); return [s.maxWidth, s.marginLeft, document.body.getBoundingClientRect().width];")
    assert body[0] == "none" and body[1] == "0px" and body[2] >= 1400
    rules = lab.js("return [...document.styleSheets].flatMap(s => { try { return [...s.cssRules]; } catch (e) { return []; } })"
                   ".filter(r => r.selectorText && r.parentStyleSheet.ownerNode && r.parentStyleSheet.ownerNode.closest"
                   " && r.parentStyleSheet.ownerNode.closest('.thinkdiff-browser')).map(r => r.selectorText);")
    assert rules and all(all(part.strip().startswith((".thinkdiff-card", ".thinkdiff-browser")) for part in r.split(","))
                         for r in rules)
    line = lab.js(f"return parseFloat(getComputedStyle(document.querySelector('{CARD} .kv')).lineHeight);")
    assert line < 24                                      # not the 28 px line height of HTML widgets


def test_changing_the_category_changes_the_list_and_the_card(lab):
    before_list, before_card = lab.listed(), lab.card_id()
    from selenium.webdriver.support.ui import Select

    Select(_control(lab.driver, "dropdown", "category")).select_by_visible_text("deductive")
    lab.until(lambda: lab.listed() != before_list and lab.card_id() not in (None, before_card),
              "the list and the card to change with the category")
    assert lab.listed()[0].split()[0] == str(lab.card_id())
    assert "ReasonScore: deductive" in lab.count_text()
    assert CONTROLS_WIDTH[0] <= lab.measure_controls() <= CONTROLS_WIDTH[1]
    lab.shot("category-deductive", lab.browser_element())


def test_jumping_to_a_latent_id_shows_that_latent(lab):
    from selenium.webdriver.common.keys import Keys

    target = int(lab.listed()[-1].split()[0])
    assert target != lab.card_id()
    box = _control(lab.driver, "text", "go to latent")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(target), Keys.ENTER)
    lab.until(lambda: lab.card_id() == target, f"the card of latent {target}")
    assert f"Latent {target}" in lab.card_pane_text()
    assert CONTROLS_WIDTH[0] <= lab.measure_controls() <= CONTROLS_WIDTH[1]
    lab.shot("jumped", lab.browser_element())


def test_a_similar_latent_button_shows_that_latent(lab):
    buttons = [b for b in lab.driver.find_elements("css selector", ".thinkdiff-cardpane button") if b.is_displayed()]
    assert buttons, "no similar-latent buttons"
    target = int(buttons[0].text.split()[1])
    buttons[0].click()
    lab.until(lambda: lab.card_id() == target, f"the card of the similar latent {target}")


def _type_into_readout(lab, label: str, text: str):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    readout = _control(lab.driver, "slider", label)
    ActionChains(lab.driver).click(readout).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL) \
        .send_keys(text).send_keys(Keys.ENTER).perform()


def test_a_filter_that_matches_nothing_says_so_and_relaxing_it_shows_a_card(lab):
    import pandas as pd

    runs = Path(os.environ["THINKDIFF_RUNS"]) / "label"
    table = pd.concat([pd.read_parquet(p) for p in runs.glob("*/cards/features.parquet")])
    live = table[table.frequency > 0].relative_norm.round(6)
    empty = next(x / 100 for x in range(100) if not ((live >= x / 100) & (live <= x / 100)).any())
    _type_into_readout(lab, "relative norm", f"{empty:.2f} - {empty:.2f}")
    lab.until(lambda: "No latent passes the filters" in lab.card_pane_text(), "the empty-filter message")
    assert lab.card_id() is None and lab.listed() == [] and lab.count_text().startswith("0 of")
    assert CONTROLS_WIDTH[0] <= lab.measure_controls() <= CONTROLS_WIDTH[1]
    lab.shot("nothing-matches", lab.browser_element())
    _type_into_readout(lab, "relative norm", "0.00 - 1.00")
    lab.until(lambda: lab.card_id() is not None, "a card after relaxing the filter")
    assert "No latent passes" not in lab.card_pane_text() and lab.listed()[0].split()[0] == str(lab.card_id())
    lab.shot("relaxed", lab.browser_element())


def test_controls_keep_their_width_in_every_state(lab):
    """The controls column's width in each state this test puts the browser in itself: default, another
    category, a filter that matches nothing, and a jump to a latent."""
    from selenium.webdriver.support.ui import Select

    widths = [lab.measure_controls()]
    before = lab.listed()
    Select(_control(lab.driver, "dropdown", "category")).select_by_visible_text("deductive")
    lab.until(lambda: lab.listed() != before and "ReasonScore: deductive" in lab.count_text(), "the deductive list")
    widths.append(lab.measure_controls())
    _type_into_readout(lab, "relative norm", "1.00 - 1.00")
    lab.until(lambda: lab.card_id() is None or lab.count_text().startswith(("0 of", "1 of")), "a narrowed filter")
    widths.append(lab.measure_controls())
    lab.reset()
    widths.append(lab.measure_controls())
    assert all(CONTROLS_WIDTH[0] <= w <= CONTROLS_WIDTH[1] for w in widths), widths
    assert lab.console_errors() == []


def test_the_browser_comes_back_after_a_page_reload(lab):
    lab.js("window.jupyterapp.commands.execute('docmanager:save');")
    lab.until(lambda: lab.js(JS_PANEL + " return !p.context.model.dirty && !document.querySelector('.jp-Dialog');"),
              "the notebook to be saved (no dialog open)")
    lab.open_notebook()          # the same address again: a reload, with the kernel still running
    lab.until(lambda: lab.card_id() is not None, "the browser's card after a reload")
    assert lab.error_outputs() == []
    assert CONTROLS_WIDTH[0] <= lab.measure_controls() <= CONTROLS_WIDTH[1]
    assert lab.console_errors() == []
    lab.shot("after-reload", lab.browser_element())


def test_the_static_export_renders_every_card_and_link_without_a_kernel(lab):
    rec = json.loads((Path(os.environ["THINKDIFF_RUNS"]) / "report" / "smoke" / f"{NOTEBOOK}.json").read_text())
    page = Path(rec["links"]["feature cards"])
    page = page if page.is_absolute() else paths.REPO_ROOT / page
    html = page.read_text()
    assert "<script" not in html.lower() and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "Top latents: " in html and "Distilled-only extremes" in html
    d = lab.driver
    assert lab.console_errors() == []          # the JupyterLab page's; then the export's own
    lab_tab = d.current_window_handle
    d.switch_to.new_window("tab")              # the export in a tab of its own: the notebook's page stays open
    try:
        d.get(page.as_uri())
        cards = d.find_elements("css selector", ".thinkdiff-card")
        index = d.find_elements("css selector", "ul.index a")
        assert cards and len(index) == len(cards)
        for c in cards:
            assert c.is_displayed() and c.size["height"] > 300 and c.find_elements("tag name", "svg")
            assert "nan" not in c.text.split()
        anchors = d.execute_script("return [...document.querySelectorAll('a[href^=\"#\"]')].map(a => a.getAttribute('href').slice(1));")
        missing = [a for a in anchors if d.execute_script(f"return document.getElementById('{a}') === null;")]
        assert anchors and missing == []
        assert rb.console_errors(d) == []
        lab.shot("static-export")
        lab.shot("static-card", cards[0])
    finally:
        d.close()
        d.switch_to.window(lab_tab)

