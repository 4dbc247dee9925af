"""docs/explorer.html: its JavaScript against optimizer_paths.py (in Node), and the page itself (in headless Chromium).

The page's numbers live in one block, <script id="explorer-core">, with no DOM in it: the Node tests run that
block and compare it with the Python. The browser tests open the page from file://, move its sliders and read
the numbers it shows.

Without node, or without Chromium, chromedriver and selenium, those tests are skipped with a line saying how to
install them; under CI=true they fail instead.
"""
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from conftest import ROOT, characteristic_polynomial

PAGE = os.path.join(ROOT, "docs", "explorer.html")
# NAMES, the optimizers the page implements, are read from the page itself (page_names, below).
# optimizer_paths.PANELS may draw more: each of its optimizers is on the page, or here, with the reason it is not.
NOT_ON_THE_PAGE = {}  # name -> why docs/explorer.html does not draw it
PANEL_NAMES = ("quadratic", "rotated", "rosenbrock")
JS_FUNCTIONS = {"quadratic": "E.quadratic(20, 0)", "rotated": "E.quadratic(20, 45)", "rosenbrock": "E.rosenbrock()"}
TOLERANCE = 1e-12  # |js - python| <= TOLERANCE * (the path's largest |coordinate|), at every step
# RMSProp's bounce on the rotated quadratic and on Rosenbrock: as s shrinks, its step lr / sqrt(s) grows past the
# stable limit across the valley, and from then on a difference of one rounding grows by a factor that rises from
# about 2 to 7 a step (measured), past 1e-12 of the path at steps 86 and 93. Against XLA's default build (which fuses
# multiply-adds) those two paths agree to 1e-12 only before that: over their first BOUNCE_ONSET steps. Against XLA
# built without FMA they agree over every step.
BOUNCE_ONSET = 80
BOUNCING = {("rmsprop", "rotated"), ("rmsprop", "rosenbrock")}
# XLA without fused multiply-adds (FMA is x86-64's since AVX2: allow AVX at most) and without its algebraic
# simplifier (which folds 0.4 * 0.1 * 2 into 0.08000000000000002): every float64 operation rounded as written.
STRICT_XLA_FLAGS = "--xla_cpu_max_isa=AVX --xla_disable_hlo_passes=algsimp"
INSTALL_NODE = "install Node.js: `apt-get install nodejs` (Debian/Ubuntu), or see https://nodejs.org"
INSTALL_BROWSER = "install them: `apt-get install chromium chromium-driver` and `pip install selenium`"


def skip_or_fail(message):
    """Skip the test; under CI=true, where every tool is installed on purpose, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --- Node: the page's JavaScript, run as it is -----------------------------------------------------------


def core_js(html=None):
    """The text of <script id="explorer-core">: the optimizers, functions, paths and theory, with no DOM."""
    if html is None:
        with open(PAGE, encoding="utf-8") as f:
            html = f.read()
    match = re.search(r'<script id="explorer-core">(.*?)</script>', html, re.S)
    assert match, "docs/explorer.html has no <script id=\"explorer-core\"> block"
    return match.group(1)


def node(program, data=None, core=None):
    """Run the page's core block, then `program` (which sees the core as E and the input as DATA, and sets RESULT),
    in Node -> RESULT, read back from JSON (shortest round-trip float text: exact)."""
    if shutil.which("node") is None:
        skip_or_fail(f"node not found: {INSTALL_NODE}")
    script = (core_js() if core is None else core) + "\n;const E = globalThis.Explorer;\n" \
        + "const DATA = JSON.parse(require('fs').readFileSync(0, 'utf8'));\nlet RESULT;\n" + program \
        + "\n;process.stdout.write(JSON.stringify(RESULT));\n"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "program.js")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        done = subprocess.run(["node", path], input=json.dumps(data), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def page_names():
    """The optimizers the page implements: the keys of its table of update rules, OPTIMIZERS in the core block,
    read in Node. () where there is no node (the tests that need it skip, or fail under CI=true, in node())."""
    if shutil.which("node") is None:
        return ()
    return tuple(node("RESULT = Object.keys(E.OPTIMIZERS);"))


NAMES = page_names()


def names_or_skip():
    if not NAMES:
        skip_or_fail(f"node not found: {INSTALL_NODE}")
    return NAMES


JS_PATHS = """
RESULT = {};
for (const job of DATA) {
  const fn = eval(job.fn), r = E.run(job.name, job.settings, fn, job.start, job.steps);
  RESULT[`${job.name} ${job.panel}`] = [Array.from(r.xs), Array.from(r.ys)];
}
"""


def path_jobs():
    """The page's optimizers on the three panels, at optimizer_paths.PANELS' settings."""
    import optimizer_paths
    panels = optimizer_paths.PANELS
    return [dict(name=name, panel=panel, fn=JS_FUNCTIONS[panel], settings=panels[panel]["settings"][name],
                 start=list(panels[panel]["start"]), steps=panels[panel]["steps"])
            for panel in PANEL_NAMES for name in names_or_skip()]


def js_paths(core=None):
    """{(name, panel): (xs, ys)}: every path of results/paths, from the page's JavaScript."""
    paths = node(JS_PATHS, path_jobs(), core)
    return {tuple(key.split()): (np.array(xs, dtype=float), np.array(ys, dtype=float))  # JSON null: NaN
            for key, (xs, ys) in paths.items()}


@pytest.fixture(scope="module")
def js():
    return js_paths()


STRICT_RUN = """
import json, sys
sys.path.insert(0, {root!r})
import optimizer_paths
paths = {{}}
for panel, p in optimizer_paths.PANELS.items():
    for name in {names!r}:
        xs, ys, _ = optimizer_paths.run(name, p["settings"][name], p["f"], p["start"], p["steps"])
        paths[f"{{name}} {{panel}}"] = [list(map(float, xs)), list(map(float, ys))]
print(json.dumps(paths))
"""
STRICT_MACHINE = platform.machine().lower() in ("x86_64", "amd64")
_strict_run = {}  # the Python without FMA, started once, early, so that it runs while this one works


def start_strict_run():
    if STRICT_MACHINE and NAMES and "process" not in _strict_run:
        _strict_run["process"] = subprocess.Popen(
            [sys.executable, "-c", STRICT_RUN.format(root=ROOT, names=list(NAMES))], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=dict(os.environ, XLA_FLAGS=STRICT_XLA_FLAGS, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def python_paths():
    """{(name, panel): (xs, ys, f values)}: optimizer_paths.run, as the repository runs it (XLA's default build), for
    the page's optimizers."""
    names = names_or_skip()
    start_strict_run()
    import optimizer_paths
    yield {(name, panel): optimizer_paths.run(name, p["settings"][name], p["f"], p["start"], p["steps"])
           for panel, p in optimizer_paths.PANELS.items() for name in names}
    process = _strict_run.pop("process", None)
    if process is not None and process.poll() is None:  # started, and no test read it: stop it
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def strict_python_paths():
    """The same runs of optimizer_paths.run, in a Python whose XLA fuses no multiply-add and reassociates nothing."""
    if not STRICT_MACHINE:
        pytest.skip("XLA's flag that turns fused multiply-adds off (--xla_cpu_max_isa) is x86-64's")
    names_or_skip()
    start_strict_run()
    out, err = _strict_run["process"].communicate(timeout=180)
    assert _strict_run["process"].returncode == 0, err[-3000:]
    return {tuple(key.split()): (np.array(xs), np.array(ys)) for key, (xs, ys) in json.loads(out).items()}


def relative_differences(a, b):
    """|a - b| at each step (the larger of x and y), over the path's scale: max |coordinate| of b, the reference.

    Relative to the path's scale, not to each coordinate: the quadratics' coordinates fall to 1e-67 (momentum's y),
    where a difference of one rounding in an earlier step is large next to the coordinate but not next to the path.
    """
    (ax, ay), (bx, by) = a[:2], b[:2]
    scale = max(np.abs(bx).max(), np.abs(by).max())
    differences = np.maximum(np.abs(ax - bx), np.abs(ay - by)) / scale
    return np.where(np.isnan(differences), np.inf, differences)  # a path that is NaN where the other is not: far off


PAIRS = [(name, panel) for panel in PANEL_NAMES for name in NAMES] or [("node", "missing")]  # (then js skips)


def test_the_page_stands_alone():
    """One file: no script, style or image from anywhere else, so it opens from file:// with no network."""
    with open(PAGE, encoding="utf-8") as f:
        html = f.read()
    assert not re.search(r"<script[^>]*\bsrc=", html), "a script loaded from elsewhere"
    assert not re.search(r"<link[^>]*stylesheet", html), "a stylesheet loaded from elsewhere"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "something loaded over the network"
    assert not re.search(r"@import|url\(\s*['\"]?https?:", html)
    assert not re.search(r"\b(document|window)\b", core_js(html)), "the core block must run without a DOM (in Node)"


@pytest.mark.parametrize("name, panel", PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
def test_js_path_equals_python(js, python_paths, name, panel):
    """Each optimizer on each function of results/paths, at optimizer_paths.PANELS' settings, over the panel's
    steps (300; Rosenbrock 2000): the JavaScript path equals optimizer_paths.run's float64 path to 1e-12 of the
    path's scale (see relative_differences), at every step. Measured here: at most 1.4e-15 for 13 of the 15.

    They are not bit for bit the same, because XLA's default build fuses a * b + c into one fused multiply-add
    (one rounding instead of two) and folds constant products, and JavaScript has neither. The two RMSProp bounces
    (BOUNCING) blow those roundings up from about step 86 (rotated) and 93 (Rosenbrock), to 8e-2 and 4e-3 of the
    path, as they do between XLA's own builds: for them only the first BOUNCE_ONSET steps are held to 1e-12 here,
    and test_js_path_equals_python_compiled_without_fma holds every step.
    """
    differences = relative_differences(js[(name, panel)], python_paths[(name, panel)])
    steps = BOUNCE_ONSET if (name, panel) in BOUNCING else len(differences) - 1
    print(f"{name} on {panel}: max |js - python| / scale = {differences.max():.2e} over {len(differences) - 1} steps, "
          f"{differences[:steps + 1].max():.2e} over the {steps} held to {TOLERANCE:g}")
    assert steps >= 80 and (steps >= 300 or (name, panel) in BOUNCING)
    assert differences[:steps + 1].max() <= TOLERANCE, np.flatnonzero(differences > TOLERANCE)[:5]


@pytest.mark.parametrize("name, panel", PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
def test_js_path_equals_python_compiled_without_fma(js, strict_python_paths, name, panel):
    """The same comparison over every step, RMSProp's bounces included, against optimizer_paths.run in a Python whose
    XLA rounds every operation as written (STRICT_XLA_FLAGS). Measured: 0, bit for bit, for all 15 paths."""
    differences = relative_differences(js[(name, panel)], strict_python_paths[(name, panel)])
    print(f"{name} on {panel}: max |js - python without fma| / scale = {differences.max():.2e}")
    assert differences.max() <= TOLERANCE, np.flatnonzero(differences > TOLERANCE)[:5]


def test_the_pages_optimizers_are_pythons():
    """The page's optimizers (the keys of its OPTIMIZERS, which NAMES holds) are optimizers of the Python registry
    (optimized_sgd.OPTIMIZERS), with the same hyperparameters, and every panel of optimizer_paths.PANELS has settings
    for each: a page optimizer that Python lacks fails here. The other way round, every optimizer that
    optimizer_paths.PANELS draws is on the page, or in NOT_ON_THE_PAGE with the reason it is not; an optimizer of the
    registry that draws no paths is none of the page's business."""
    import optimized_sgd
    import optimizer_paths
    names = names_or_skip()
    page = node("RESULT = { names: E.NAMES, takes: Object.fromEntries(Object.entries(E.OPTIMIZERS).map("
                "([name, [, takes]]) => [name, takes])) };")
    assert len(set(names)) == len(names) and page["names"] == list(names)  # E.NAMES, which the page's UI loops over
    assert not set(NOT_ON_THE_PAGE) & set(names), "NOT_ON_THE_PAGE names an optimizer the page has"
    for name in names:
        assert name in optimized_sgd.OPTIMIZERS, f"the page's {name!r} is not in optimized_sgd.OPTIMIZERS"
        assert set(page["takes"][name]) == set(optimized_sgd.hyperparameters(name)) - {"lr"}, name
    for panel, p in optimizer_paths.PANELS.items():
        lacking = [name for name in names if name not in p["settings"]]
        assert not lacking, f"the page draws {lacking}, for which optimizer_paths.PANELS[{panel!r}] has no settings"
        undrawn = [name for name in p["settings"] if name not in names and name not in NOT_ON_THE_PAGE]
        assert not undrawn, (f"optimizer_paths.PANELS[{panel!r}] draws {undrawn}, which docs/explorer.html does "
                             f"not implement: port it to the page's OPTIMIZERS, or add it to NOT_ON_THE_PAGE with why")


def test_the_functions_and_settings_are_optimizer_paths(python_paths):
    """The page's PANELS are optimizer_paths.PANELS (settings of the page's optimizers, steps, starts, the rotated
    start to the bit), and its f and gradients are JAX's: equal to the bit, at 50 random points, to JAX run op by op
    (eagerly)."""
    import jax
    import optimizer_paths
    rng = np.random.default_rng(0)
    points = (3 * rng.normal(size=(50, 2))).tolist()
    got = node("""
      RESULT = { panels: {}, values: {} };
      for (const [panel, p] of Object.entries(E.PANELS)) RESULT.panels[panel] = { start: p.fn().start, steps: p.steps, settings: p.settings };
      for (const [panel, text] of Object.entries(DATA.functions)) {
        const fn = eval(text); RESULT.values[panel] = DATA.points.map((p) => [fn.f(p), ...fn.grad(p)]);
      }""", dict(points=points, functions=JS_FUNCTIONS))
    for panel, p in optimizer_paths.PANELS.items():
        settings = {name: p["settings"][name] for name in NAMES}  # (test_the_pages_optimizers_are_pythons: all there)
        assert got["panels"][panel] == dict(start=list(p["start"]), steps=p["steps"], settings=settings)
    with jax.enable_x64(True):
        for panel in PANEL_NAMES:
            f = optimizer_paths.PANELS[panel]["f"]
            for (x, y), js_values in zip(points, got["values"][panel]):
                p = {"x": jax.numpy.float64(x), "y": jax.numpy.float64(y)}
                g = jax.grad(f)(p)
                assert [float(f(p)), float(g["x"]), float(g["y"])] == js_values, (panel, x, y)


def test_adams_powers_are_the_c_librarys():
    """beta^t for Adam's bias correction: the page's pow equals Python's float pow (the C library's, as XLA's float64
    runs use) for every step up to 2000, which Math.pow does not (V8 squares repeatedly: 0.9^4 is one ulp off)."""
    got = node("RESULT = [0.9, 0.999].map((b) => Array.from({length: 2000}, (_, i) => [E.pow(b, i + 1), Math.pow(b, i + 1)]));")
    for base, rows in zip((0.9, 0.999), got):
        assert [own for own, _ in rows] == [base ** float(t) for t in range(1, 2001)]
        assert sum(v8 != base ** float(t) for t, (_, v8) in enumerate(rows, 1)) > 10  # why the page has its own


# --- Theory: rates, optimal settings, roots -------------------------------------------------------------------


def largest_root(name, lr, mu, curvatures):
    return max(np.abs(np.roots(characteristic_polynomial(name, lr, mu, h))).max() for h in curvatures)


def test_theory_equals_optimizer_paths_theory():
    from optimizer_paths import theory
    cases = [(kappa, m) for kappa in (10, 20, 100, 1000, 10000) for m in (1.0, 0.2, 4 / kappa)]
    got = node("RESULT = DATA.map(([kappa, m]) => E.theory(kappa, m));", cases)
    for (kappa, m), js_theory in zip(cases, got):
        for method, (name, settings, rate) in theory(kappa, m).items():
            js_name, js_settings, js_rate = js_theory[method]
            assert js_name == name and js_settings.keys() == settings.keys()
            for key in settings:
                assert js_settings[key] == pytest.approx(settings[key], rel=1e-14), (kappa, m, method, key)
            assert js_rate == pytest.approx(rate, rel=1e-14)
            # ... and the rate is the largest |root| over the curvatures, in JavaScript and in NumPy
            curvatures = [m, kappa * m]
            assert largest_root(name, settings["lr"], settings.get("mu", 0.0), curvatures) == pytest.approx(rate, rel=1e-6)


def test_roots_equal_numpys():
    """The page's roots of each characteristic polynomial against np.roots, on a grid of settings and curvatures,
    and its worst rate over the curvatures m and L against the largest |root| over 201 curvatures in [m, L]."""
    cases = [(name, lr, mu, h) for name in ("sgd", "momentum", "nesterov") for lr in (0.01, 0.1, 0.3, 0.5, 0.9)
             for mu in (0.0, 0.3, 0.5, 0.9, 0.99) for h in (0.2, 1.0, 4.0)]
    got = node("""RESULT = DATA.map(([name, lr, mu, h]) => {
        const p = E.characteristicPolynomial(name, lr, mu, h);
        return [E.roots(p).map((z) => [z.re, z.im]), p.length === 3 ? E.rootKind(p) : "real",
                E.worstRate(name, lr, mu, [0.2, 4])];
      })""", cases)
    for (name, lr, mu, h), (js_roots, kind, worst) in zip(cases, got):
        polynomial = characteristic_polynomial(name, lr, mu, h)
        expected = sorted(np.roots(polynomial), key=lambda z: (round(z.real, 9), z.imag))
        js_roots = sorted((complex(re, im) for re, im in js_roots), key=lambda z: (round(z.real, 9), z.imag))
        disc = polynomial[1] ** 2 - 4 * polynomial[2] if len(polynomial) == 3 else 1.0
        tolerance = 1e-7 if abs(disc) < 1e-6 else 1e-12  # near a double root np.roots itself is only good to sqrt(eps)
        assert np.allclose(js_roots, expected, rtol=0, atol=tolerance), (name, lr, mu, h, js_roots, expected)
        assert kind == ("complex" if disc < -1e-9 else "real" if disc > 1e-9 else kind)
        spread = np.linspace(0.2, 4, 201)
        assert worst == pytest.approx(max(np.abs(np.roots(characteristic_polynomial(name, lr, mu, k))).max()
                                          for k in spread), rel=1e-9)


def test_stability_limits_and_critical_damping():
    """At stabilityLimit a root is at -1 (|z| = 1), and just past it |z| > 1; at criticalLrs the two roots meet."""
    got = node("""RESULT = [];
      for (const name of ["momentum", "nesterov"]) for (const mu of [0, 0.3, 0.5, 0.9]) for (const h of [0.2, 4]) {
        const lr = E.stabilityLimit(name, mu, h);
        RESULT.push([E.rateAt(name, lr, mu, h), E.rateAt(name, lr * 1.01, mu, h),
                     E.criticalLrs(name, mu, h).map((c) => E.rootKind(E.characteristicPolynomial(name, c, mu, h)))]);
      }""")
    for at_limit, past_it, kinds in got:
        assert at_limit == pytest.approx(1, rel=1e-9) and past_it > 1
        assert set(kinds) == {"double"}


def critical_mu(name, lr, h):
    """The mu at which the two roots at curvature h meet: the heavy ball's (1 + mu - lr h)² = 4 mu at
    mu = (1 - sqrt(lr h))²; Nesterov's (1 + mu)² (1 - lr h) = 4 mu at mu = (1 - sqrt(lr h)) / (1 + sqrt(lr h))."""
    r = math.sqrt(lr * h)
    return (1 - r) / (1 + r) if name == "nesterov" else (1 - r) ** 2


def relative_discriminant(name, lr, mu, h):
    _, b, c = characteristic_polynomial(name, lr, mu, h)
    return (b * b - 4 * c) / (b * b + 4 * abs(c))


def test_critical_mu_makes_a_double_root():
    """E.criticalMu (the "critical damping" button's mu) equals the formula to 1e-12, and there the discriminant is
    0 to 1e-13 of its terms (the page calls a root double within 1e-12), while 1e-6 away in mu, where the
    discriminant is 1e-10 to 2e-4 of its terms, the page sees two real roots below and a complex pair above."""
    cases = [(name, lr, h) for name in ("momentum", "nesterov") for lr in (1e-4, 0.003, 0.1, 0.4, 0.9)
             for h in (0.0004, 0.04, 0.2, 1.0)]
    got = node("""RESULT = DATA.map(([name, lr, h]) => { const mu = E.criticalMu(name, lr, h);
        return [mu, ...[0, -1e-6, 1e-6].map((d) => E.rootKind(E.characteristicPolynomial(name, lr, mu + d, h)))];
      });""", cases)
    for (name, lr, h), (mu, at, below, above) in zip(cases, got):
        assert mu == pytest.approx(critical_mu(name, lr, h), abs=1e-12), (name, lr, h)
        assert abs(relative_discriminant(name, lr, mu, h)) < 1e-13, (name, lr, h, mu)
        assert (at, below, above) == ("double", "real", "complex"), (name, lr, h, mu)


def test_measured_rates_equal_rates_json():
    """The page's measured rate (optimizer_paths.measured_rate's protocol) at each theory setting of rates.json: the
    same numbers, on the page's curvatures (m = 4 / kappa, L = 4: lr scaled by kappa / 4) and on rates.json's own."""
    with open(os.path.join(ROOT, "results", "paths", "rates.json")) as f:
        rows = json.load(f)["rates"]
    got = node("""RESULT = DATA.map((row) => {
        const own = E.errorNorms(row.optimizer, row.settings, [1, row.kappa]);
        const page = E.errorNorms(row.optimizer, { ...row.settings, lr: row.settings.lr * row.kappa / 4 }, [4 / row.kappa, 4]);
        return [E.measuredRate(own), E.stepsUntil(own, 1e-6), E.measuredRate(page)];
      })""", rows)
    for row, (own, steps, page) in zip(rows, got):
        assert own == pytest.approx(row["measured"], rel=1e-12), row
        assert steps == row["steps_to_1e_6"]
        assert page == pytest.approx(row["measured"], rel=1e-9), row


STEP_CASES = [[5, 2, 0.5, 0.1], [5, 0.5, 2, 0.1, 0.2], [0.1, 0.2], [5, 0.5, 2], [5, 6], [float("nan"), 0.5],
              [0.5, float("nan"), 0.5]]


def test_steps_counting_equals_pythons():
    """The page counts both ways, as optimizer_paths does: the first step under the target (steps_until), and the
    step from which it stays under (steps_until_it_stays)."""
    from optimizer_paths import steps_until, steps_until_it_stays
    got = node("RESULT = DATA.map((v) => [E.stepsUntil(v.map((x) => x ?? NaN), 1), E.staysBelowFrom(v.map((x) => x ?? NaN), 1)]);",
               [[None if math.isnan(x) else x for x in c] for c in STEP_CASES])
    assert [tuple(pair) for pair in got] == [(steps_until(v, 1), steps_until_it_stays(v, 1)) for v in STEP_CASES]


PLANTED_BUGS = {  # what a wrong port would look like, as an edit of the page's core block
    "nesterov's gradient at theta": ("return { ...momentum(lr, mu), gradPoint };", "return momentum(lr, mu);"),
    "adam without bias correction": ("const mHat = m / (1 - pow(beta1, t));", "const mHat = m;"),
    "rmsprop's eps inside the root": ("/ (Math.sqrt(s) + eps)", "/ Math.sqrt(s + eps)"),
    "rosenbrock's gradient sign": ("return [-(2 * a) - gB * (2 * x), gB];", "return [-(2 * a) + gB * (2 * x), gB];"),
}


@pytest.mark.parametrize("bug", list(PLANTED_BUGS))
def test_a_planted_bug_is_caught(python_paths, bug):
    """The comparison can fail: each plausible mistake, planted in a copy of the core block, puts some path of its
    optimizer more than 1e-12 away from Python."""
    old, new = PLANTED_BUGS[bug]
    core = core_js()
    assert core.count(old) == 1, f"the page no longer has {old!r}: update PLANTED_BUGS"
    paths = js_paths(core.replace(old, new))
    worst = max(relative_differences(paths[pair], python_paths[pair])[:BOUNCE_ONSET + 1].max() for pair in paths)
    print(f"{bug}: max relative difference {worst:.2e}")
    assert worst > 1e3 * TOLERANCE


# --- The page in a browser ------------------------------------------------------------------------------------


def find_browser():
    """-> (chromium, chromedriver) paths on PATH, or skip (fail under CI=true) saying how to install them."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        selenium = None
    missing = [what for what, found in (("chromium", chromium), ("chromedriver", driver), ("selenium", selenium)) if not found]
    if missing:
        skip_or_fail(f"no {', '.join(missing)} for the browser test: {INSTALL_BROWSER}")
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with the page open from file://, its console logged. Chromium as root needs --no-sandbox,
    and a fresh profile with its background networking off, or it tries the (closed) network."""
    chromium, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="explorer-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1320", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get("file://" + PAGE)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def severe_logs(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def text(driver, element_id):
    return driver.find_element("id", element_id).text.strip()


def move_slider(driver, slider_id, value):
    """Set a range input's value and fire `input`, as a drag does."""
    driver.execute_script("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
                          "s.dispatchEvent(new Event('input', {bubbles: true}));", slider_id, str(value))


def click(driver, css):
    driver.find_element("css selector", css).click()


def page_settings(driver, name):
    return driver.execute_script("return Object.assign({}, explorer.state.settings[arguments[0]]);", name)


def python_numbers(name, settings, m, L):
    """What the page should show for a setting, from optimizer_paths and NumPy: the path from (-5, -2) on
    (m x² + L y²) / 2 (300 steps) and its step counts; the rate measured as rates.json measures it; theory's rate
    (the largest |root| over m and L); the roots' moduli at m and at L, largest first."""
    import optimizer_paths
    f = lambda p: (m * p["x"] ** 2 + L * p["y"] ** 2) / 2  # noqa: E731
    with np.errstate(all="ignore"):
        _, _, values = optimizer_paths.run(name, settings, f, (-5.0, -2.0), 300)
        xs, ys, _ = optimizer_paths.run(name, settings, f, (1.0, 1.0), optimizer_paths.RATE_STEPS)
        measured = optimizer_paths.measured_rate(np.hypot(xs, ys))
    polynomials = {h: characteristic_polynomial(name, settings["lr"], settings.get("mu", 0.0), h) for h in (m, L)}
    return dict(first=optimizer_paths.steps_until(values, 1e-3),
                stays=optimizer_paths.steps_until_it_stays(values, 1e-3),
                measured=measured, theory=largest_root(name, settings["lr"], settings.get("mu", 0.0), (m, L)),
                moduli={h: sorted(np.abs(np.roots(p)), reverse=True) for h, p in polynomials.items()})


def shown(value, digits):
    """A number as the page shows it with `digits` decimals; equal to the text up to the last digit's rounding."""
    return pytest.approx(value, abs=0.5 * 10 ** -digits + 1e-12)


def check_momentum_numbers(driver, m=0.2, L=4.0):
    """Every number the page shows for momentum (table and roots) against python_numbers at its current setting."""
    settings = {k: page_settings(driver, "momentum")[k] for k in ("lr", "mu")}
    expected = python_numbers("momentum", settings, m, L)
    steps = lambda v: "never" if v is None else str(v)  # noqa: E731
    assert text(driver, "first-momentum") == steps(expected["first"])
    assert text(driver, "stays-momentum") == steps(expected["stays"])
    assert float(text(driver, "theory-momentum")) == shown(expected["theory"], 5)
    if expected["theory"] < 1:
        assert float(text(driver, "measured-momentum")) == shown(expected["measured"], 5)
    for h, tag in ((m, "m"), (L, "L")):
        moduli = [float(text(driver, f"root-{tag}-{k}")) for k in (1, 2)]
        assert moduli == [shown(v, 4) for v in expected["moduli"][h]], (h, moduli)
    return settings, expected


def roots_shown(driver, tag):
    return [text(driver, f"root-{tag}-{k}") for k in (1, 2)]


def test_the_critical_damping_button(browser):
    """The button "critical damping at h = m" sets the mu of the method in views 3 and 4 (at its lr, for this κ) to
    where its roots at h = m meet: the heavy ball's (1 - sqrt(lr m))², Nesterov's (1 - sqrt(lr m)) / (1 + sqrt(lr m)),
    to 1e-12, beyond the mu slider's reach (a pixel is about 0.007 of mu). The text then says "double root" and both
    roots are shown at sqrt(mu) (heavy ball; Nesterov: sqrt(mu (1 - lr m))); the slider and a redraw keep that mu; mu
    moved by 1e-6 either way gives two real roots or a complex pair. Where no mu in [0, 0.999] makes them meet, the
    button is off."""
    driver = browser
    assert driver.execute_script("return Object.keys(Explorer.OPTIMIZERS);") == list(names_or_skip())
    click(driver, "#reset-quadratic")
    click(driver, "input[name=edit][value=momentum]")
    assert "h = m" in text(driver, "critical-damping") and "h = m" in driver.find_element(
        "id", "critical-damping").get_attribute("title")
    for name, kappa, lr in (("momentum", 20, 0.4), ("momentum", 100, 0.3), ("momentum", 1000, 0.01),
                            ("nesterov", 20, 0.3), ("nesterov", 1000, 0.002)):
        click(driver, f"input[name=method][value={name}]")  # (the sliders now edit it too)
        move_slider(driver, "kappa", math.log10(kappa))
        move_slider(driver, "lr", math.log10(lr))
        move_slider(driver, "mu", 0.95)
        assert text(driver, "roots-kind-m") != "a double root: critical damping"
        click(driver, "#critical-damping")
        settings = page_settings(driver, name)
        m = 4 / kappa
        assert driver.execute_script("return Explorer.quadratic(explorer.state.kappa, 0).curvatures[0]") == m
        assert settings["lr"] == pytest.approx(lr, rel=1e-13)
        mu = settings["mu"]
        assert mu == pytest.approx(critical_mu(name, settings["lr"], m), abs=1e-12, rel=0), (name, kappa, lr)
        assert abs(relative_discriminant(name, settings["lr"], mu, m)) < 1e-13
        assert "double root" in text(driver, "roots-kind-m"), (name, kappa, lr, text(driver, "roots-kind-m"))
        assert f"{mu:.6f}" in text(driver, "critical-text")
        double = math.sqrt(mu) if name == "momentum" else math.sqrt(mu * (1 - settings["lr"] * m))
        assert roots_shown(driver, "m") == [f"{double:.4f}"] * 2, (name, kappa, lr)
        roots = np.roots(characteristic_polynomial(name, settings["lr"], mu, m))
        assert np.allclose(roots, double, rtol=0, atol=1e-7)  # (np.roots at a double root: sqrt(eps))
        # The slider and its value shown do not round it away: a redraw, or another control, leaves it as it was.
        assert float(driver.find_element("id", "mu").get_attribute("value")) == pytest.approx(mu, abs=1e-14)
        click(driver, "#show-adam")
        click(driver, "#show-adam")
        assert page_settings(driver, name)["mu"] == mu and driver.execute_script("return explorer.state.edit") == name
        # ... and off it, however little, it is no double root.
        for step, kind in ((1e-6, "a complex pair"), (-1e-6, "two real roots"), (0.0072, "a complex pair"),
                           (-0.0072, "two real roots")):
            move_slider(driver, "mu", mu + step)
            assert "double root" not in text(driver, "roots-kind-m") and text(driver, "roots-kind-m").startswith(kind)
    # Off: no mu in [0, 0.999] gives Nesterov a double root at h = m once lr m > 1, nor the heavy ball at lr m < 2.5e-7.
    for name, kappa, lr in (("nesterov", 1, 0.3), ("momentum", 20, 1e-6)):
        click(driver, f"input[name=method][value={name}]")
        move_slider(driver, "kappa", math.log10(kappa))
        move_slider(driver, "lr", math.log10(lr))
        button = driver.find_element("id", "critical-damping")
        assert not button.is_enabled() and "no mu" in text(driver, "critical-text")
        assert not 0 <= critical_mu(name, page_settings(driver, name)["lr"], 4 / kappa) <= 0.999
    move_slider(driver, "lr", math.log10(0.4))
    assert driver.find_element("id", "critical-damping").is_enabled()
    assert severe_logs(driver) == []


def test_the_page_in_a_browser(browser, python_paths, tmp_path):
    """Open the page from file://; no console errors; the results/paths step counts at the reset buttons; heavy-ball
    momentum at kappa 20 moved by its sliders to a stable setting, to the optimum and past the -1 boundary, every
    number shown checked against Python; kappa 100 and 1000 against rates.json; a click on the (lr, mu) map; the
    time of one full redraw (printed, not asserted); a screenshot ($EXPLORER_SCREENSHOT, else tmp_path)."""
    driver = browser
    assert severe_logs(driver) == []
    with open(os.path.join(ROOT, "results", "paths", "paths.json")) as f:
        paths_json = json.load(f)

    # The reset buttons: the settings of results/paths, and the steps to 1e-3 of optimizer_paths.run's paths, counted
    # both ways; paths.json's steps_to_target is one of the two (the first, or, in its newer form, from where it stays).
    import optimizer_paths
    for panel in PANEL_NAMES:
        click(driver, f"#reset-{panel}")
        p = optimizer_paths.PANELS[panel]
        for name in NAMES:
            assert page_settings(driver, name).items() >= p["settings"][name].items()
            values = python_paths[(name, panel)][2]
            shown_counts = [text(driver, f"{column}-{name}") for column in ("first", "stays")]
            if (name, panel) not in BOUNCING:  # (where XLA's bounce differs: see test_js_path_equals_python)
                assert shown_counts == [str(c) if c is not None else "never" for c in
                                        (optimizer_paths.steps_until(values, 1e-3),
                                         optimizer_paths.steps_until_it_stays(values, 1e-3))], (panel, name)
            recorded = paths_json[panel]["optimizers"][name]["steps_to_target"]
            assert str(recorded if recorded is not None else "never") in shown_counts, (panel, name, recorded)
    assert text(driver, "angle-value") == "0°" and text(driver, "kappa-value") == "20"

    # Heavy ball at kappa 20: edit momentum, move lr and mu.
    click(driver, "#reset-quadratic")
    click(driver, "input[name=edit][value=momentum]")
    from optimizer_paths import theory
    _, optimum, optimal_rate = theory(20, 0.2)["heavy ball"]
    for lr, mu in ((0.4, 0.5), (optimum["lr"], optimum["mu"]), (0.8, 0.5)):
        move_slider(driver, "lr", math.log10(lr))
        move_slider(driver, "mu", mu)
        settings, expected = check_momentum_numbers(driver)
        # (a range input keeps 15 significant digits of its value: the page holds the setting to about 1e-15)
        assert settings == {"lr": pytest.approx(lr, rel=1e-13), "mu": pytest.approx(mu, rel=1e-13)}
        diverges = expected["theory"] > 1
        assert text(driver, "status-momentum") == ("diverges" if diverges else "")
        assert text(driver, "roots-state") == ("diverges" if diverges else "converges")
        if diverges:
            assert text(driver, "measured-momentum") == "diverges"
            assert lr * 4 > 2 * (1 + mu)  # past the heavy ball's limit lr L < 2 (1 + mu) ...
            assert min(np.roots(characteristic_polynomial("momentum", lr, mu, 4.0)).real) < -1  # ... through -1
    assert text(driver, "first-momentum") == "never"
    # at the optimum (the second setting) the rate shown was theory's
    move_slider(driver, "lr", math.log10(optimum["lr"]))
    move_slider(driver, "mu", optimum["mu"])
    assert float(text(driver, "theory-momentum")) == shown(optimal_rate, 5)
    assert text(driver, "roots-kind-m") == text(driver, "roots-kind-L") == "a double root: critical damping"

    # The page's "try this" (and docs/02 and 03): at lr 0.4, mu up: the roots for h = m meet at sqrt(mu) when
    # (1 + mu - 0.4 m)² = 4 mu, mu = 0.5143, where the rate is lowest (sqrt(mu) = 0.7172), then turn complex on |z| = sqrt(mu).
    move_slider(driver, "lr", math.log10(0.4))
    c = 1 - 0.4 * 0.2  # (c + mu)² = 4 mu: mu² - (4 - 2c) mu + c² = 0, the smaller root
    meet = ((4 - 2 * c) - math.sqrt((4 - 2 * c) ** 2 - 4 * c ** 2)) / 2
    rates = {}
    for mu in (0.0, 0.3, meet - 0.02, meet, meet + 0.02, 0.8):
        move_slider(driver, "mu", mu)
        rates[mu] = float(text(driver, "theory-momentum"))
        kind = text(driver, "roots-kind-m")
        assert kind == ("two real roots" if mu < meet - 1e-6 else "a complex pair, on |z| = √mu" if mu > meet + 1e-6
                        else "a double root: critical damping"), (mu, kind)
        if mu > meet:
            assert [text(driver, f"root-m-{k}") for k in (1, 2)] == [f"{math.sqrt(mu):.4f}"] * 2
    assert [text(driver, f"root-m-{k}") for k in (1, 2)] == ["0.8944"] * 2 and rates[0.0] == 0.92
    assert min(rates, key=rates.get) == meet and f"{rates[meet]:.3f}" == "0.717" and f"{meet:.3f}" == "0.514"
    # ... and past the meeting point the path rings: along the valley it overshoots x = 0 and swings back
    crossings = driver.execute_script("""const fn = Explorer.quadratic(20, 0);
        return arguments[0].map((mu) => { const xs = Explorer.run("momentum", {lr: 0.4, mu}, fn, fn.start, 300).xs;
          return xs.filter((x, t) => t > 0 && Math.sign(x) !== Math.sign(xs[t - 1])).length; });""", [0.3, 0.5, 0.6, 0.8])
    assert crossings[:2] == [0, 0] and min(crossings[2:]) > 5, crossings
    # ... at mu 0.5, a root for h = L leaves through -1 at lr = 2 (1 + mu) / L = 0.75 (Nesterov: at 0.375)
    for name, limit in (("momentum", 0.75), ("nesterov", 0.375)):
        click(driver, f"input[name=edit][value={name}]")
        move_slider(driver, "mu", 0.5)
        for lr in (0.99 * limit, 1.01 * limit):
            move_slider(driver, "lr", math.log10(lr))
            assert text(driver, f"status-{name}") == ("diverges" if lr > limit else "")
            assert (float(text(driver, "root-L-1")) > 1) == (lr > limit)
    # ... and the turn: the steps to 1e-3 of the rotated panel at 45°, GD's, momentum's and Nesterov's at every angle
    click(driver, "#reset-quadratic")
    for angle in (0, 10, 20, 30, 45, 60, 90, 135):
        move_slider(driver, "angle", angle)
        assert [text(driver, f"first-{name}") for name in ("sgd", "momentum", "nesterov")] == ["47", "19", "30"]
    move_slider(driver, "angle", 45)
    assert text(driver, "angle-value") == "45°"
    for name in NAMES:
        assert text(driver, f"first-{name}") == str(paths_json["rotated"]["optimizers"][name]["steps_to_target"])
    assert text(driver, "stays-rmsprop") == "never"

    # ... and Rosenbrock: views 3 and 4 on its curvatures at the minimum (docs/03)
    click(driver, "#reset-rosenbrock")
    click(driver, "input[name=method][value=momentum]")
    curvatures = np.linalg.eigvalsh([[802.0, -400.0], [-400.0, 200.0]])  # its Hessian at (1, 1)
    assert [text(driver, "curvature-m"), text(driver, "curvature-L")] == ["0.3994", "1002"]
    assert f"κ = {curvatures[1] / curvatures[0]:.0f}" in text(driver, "curvature-note")
    expected = sorted(np.abs(np.roots(characteristic_polynomial("momentum", 0.001, 0.9, curvatures[0]))), reverse=True)
    assert [text(driver, "root-m-1"), text(driver, "root-m-2")] == [f"{v:.4f}" for v in expected] == ["0.9959", "0.9037"]
    assert text(driver, "roots-kind-m") == "two real roots"
    click(driver, "#optimum-momentum")  # ... whose best setting diverges from the start, where the curvature is larger
    assert text(driver, "status-momentum") == "diverges"
    assert max(np.linalg.eigvalsh([[2 + 1200 * 1.5 ** 2 - 400 * 2, 400 * 1.5], [400 * 1.5, 200]])) == pytest.approx(2092, abs=1)

    # Where rates.json applies (kappa 10, 100, 1000): the optimum buttons against its rows, to the digits shown.
    with open(os.path.join(ROOT, "results", "paths", "rates.json")) as f:
        rows = {(row["kappa"], row["method"]): row for row in json.load(f)["rates"]}
    click(driver, "#reset-quadratic")
    for kappa in (10, 100, 1000):
        move_slider(driver, "kappa", math.log10(kappa))
        assert text(driver, "kappa-value") == str(kappa)
        for name, method in (("momentum", "heavy ball"), ("nesterov", "nesterov, optimal")):
            click(driver, f"#optimum-{name}")
            row = rows[(kappa, method)]
            assert text(driver, f"theory-{name}") == f"{row['theory']:.5f}"
            assert text(driver, f"measured-{name}") == f"{row['measured']:.5f}"
    move_slider(driver, "kappa", math.log10(20))
    assert driver.execute_script("return explorer.state.kappa") == 20

    # The (lr, mu) map: a click sets the sliders (to 3 significant digits of lr, 3 decimals of mu).
    click(driver, "#reset-quadratic")
    click(driver, "input[name=method][value=momentum]")  # the map shows the heavy ball ...
    click(driver, "input[name=edit][value=sgd]")  # ... while the sliders edit sgd
    assert driver.execute_script("return explorer.state.method") == "momentum"
    from selenium.webdriver.common.action_chains import ActionChains
    canvas = driver.find_element("id", "view-map")
    target_lr, target_mu = 0.2, 0.6
    px, py = driver.execute_script("return explorer.mapPoint(arguments[0], arguments[1]);", target_lr, target_mu)
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(canvas, px - size["width"] / 2, py - size["height"] / 2).click().perform()
    axes = driver.execute_script("return explorer.mapAxes();")
    lr_per_pixel = math.log10(axes["x1"] / axes["x0"]) / axes["width"]
    mu_per_pixel = (axes["y1"] - axes["y0"]) / axes["height"]
    slider_lr = float(driver.find_element("id", "lr").get_attribute("value"))
    slider_mu = float(driver.find_element("id", "mu").get_attribute("value"))
    assert driver.execute_script("return explorer.state.edit") == "momentum"  # the map's method, now edited
    assert abs(slider_lr - math.log10(target_lr)) <= 1.5 * lr_per_pixel + 0.0023  # + rounding to 3 digits
    assert abs(slider_mu - target_mu) <= 1.5 * mu_per_pixel + 0.0005
    assert page_settings(driver, "momentum") == {"lr": float(f"{10 ** slider_lr:.3g}"), "mu": slider_mu}
    check_momentum_numbers(driver)

    # One full redraw: every cache cleared, four views, five optimizers, 300 steps.
    click(driver, "#reset-quadratic")
    times = driver.execute_script("""
        const full = [], slider = [];
        for (let k = 0; k < 7; k++) { const t0 = performance.now(); explorer.redraw({ full: true }); full.push(performance.now() - t0); }
        for (let k = 0; k < 7; k++) { explorer.state.settings.momentum.lr *= 1.001;
          const t0 = performance.now(); explorer.redraw(); slider.push(performance.now() - t0); }
        return [full, slider];""")
    print(f"one full redraw (caches cleared): median {statistics.median(times[0]):.1f} ms of {len(times[0])}; "
          f"after a slider move: median {statistics.median(times[1]):.1f} ms")

    # The screenshot: the results/paths settings, heavy ball in views 3 and 4, down to the end of the numbers table.
    click(driver, "#reset-quadratic")
    click(driver, "input[name=method][value=momentum]")
    bottom = driver.execute_script("return document.getElementById('numbers').getBoundingClientRect().bottom + 12")
    outer, inner = driver.get_window_size()["height"], driver.execute_script("return window.innerHeight")
    driver.set_window_size(1400, math.ceil(bottom) + outer - inner)
    driver.execute_script("window.scrollTo(0, 0); explorer.redraw();")
    screenshot = os.path.abspath(os.environ.get("EXPLORER_SCREENSHOT") or str(tmp_path / "explorer.png"))
    os.makedirs(os.path.dirname(screenshot), exist_ok=True)
    assert driver.save_screenshot(screenshot)
    if os.environ.get("EXPLORER_SCREENSHOT"):  # a result: it records where it comes from, as every file in results/
        import hashlib

        from plumbing import plots, provenance

        provenance.record_command(__file__, [])
        provenance._run["command"] = (f"EXPLORER_SCREENSHOT={os.environ['EXPLORER_SCREENSHOT']} python -m pytest "
                                      f"tests/test_explorer.py -k browser")
        with open(PAGE, "rb") as f:
            page = hashlib.sha256(f.read()).hexdigest()[:16]
        plots.stamp_png(screenshot, page=f"docs/explorer.html at {page}",
                        browser=driver.capabilities.get("browserVersion"))
    print(f"screenshot: {screenshot}")
    assert severe_logs(driver) == []
