"""The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium): sign in, submit a job through the form (a 422 shown inline first), watch the learning
curve gain points live over SSE, run predictions from the predict panel (pasted JSON on an adding
job; a picked and a drawn digit on an MNIST job), and save screenshots under `test-output/`."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import select

from jobstore.db.models import Job
from jobstore.db.session import session_scope
from tests.service.predict_helpers import REPO, EmbeddedServer, make_job

pytest_plugins = ["tests.service.fixtures_predict"]

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
OUTPUT = REPO / "test-output"


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
        )
    profile = tempfile.mkdtemp(prefix="celif-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,2600",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout: float = 30, what: str = ""):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception as exc:
        logs = "\n".join(str(entry) for entry in driver.get_log("browser"))
        _screenshot(driver, "dashboard-failure.png")
        errors = driver.execute_script(
            "return [...document.querySelectorAll('.error')].map(e => e.id + ': ' + e.textContent)"
        )
        raise AssertionError(
            f"timed out waiting for {what}\nerrors on the page: {errors}\nbrowser log:\n{logs}"
        ) from exc


def _field(driver, loc: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-loc="{loc}"]')


def _set(driver, loc: str, value: str) -> None:
    element = _field(driver, loc)
    element.clear()
    element.send_keys(value)


def _screenshot(driver, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    driver.save_screenshot(str(path))
    return path


def test_dashboard_end_to_end(browser, tmp_path, trained):
    d = browser
    with EmbeddedServer(tmp_path / "data") as srv:
        d.get(srv.url + "/")
        # Sign in with a token (a wrong one first).
        _wait(d, lambda d: d.find_element(By.ID, "view-signin").is_displayed(), what="sign-in view")
        d.find_element(By.ID, "token-input").send_keys("not-a-token")
        d.find_element(By.ID, "signin-btn").click()
        _wait(d, lambda d: "refused" in d.find_element(By.ID, "signin-error").text, what="refusal")
        d.find_element(By.ID, "token-input").clear()
        d.find_element(By.ID, "token-input").send_keys(srv.token)
        d.find_element(By.ID, "signin-btn").click()
        _wait(d, lambda d: d.find_element(By.ID, "view-jobs").is_displayed(), what="job list")
        assert d.execute_script("return localStorage.getItem('celif_token')") == srv.token

        # The submit form is built from /tasks and /neurons, defaults shown.
        d.find_element(By.ID, "new-job-link").click()
        _wait(
            d,
            lambda d: len(Select(d.find_element(By.ID, "f-task")).options) == 5,
            what="task catalog",
        )
        # The names offered are the catalog's (the dashboard spells none itself); the default
        # task needs no MNIST download; fields carry the schema's help text.
        with srv.client() as api:
            tasks, neurons = api.get("/api/v1/tasks").json(), api.get("/api/v1/neurons").json()

        def offered(select) -> list[str]:
            return [o.get_attribute("value") for o in Select(select).options]

        assert offered(d.find_element(By.ID, "f-task")) == [t["name"] for t in tasks["items"]]
        assert offered(d.find_element(By.ID, "f-neuron")) == [n["name"] for n in neurons["items"]]
        for name in ("optimizer", "device", "backend", "memory"):
            enum = neurons["training_schema"]["properties"][name]["enum"]
            assert offered(_field(d, f"training.{name}")) == enum
        assert Select(d.find_element(By.ID, "f-task")).first_selected_option.text == "adding"
        _wait(
            d,
            lambda d: _field(d, "task.params.seq_len").get_attribute("value") == "100",
            what="adding defaults",
        )
        assert _field(d, "model.neuron_params.alpha").get_attribute("value") == "0.5"
        assert _field(d, "training.lr").get_attribute("value") == "0.0005"
        helps = [h.text for h in d.find_elements(By.CSS_SELECTOR, "#job-form .field-help")]
        assert "sequence length T" in helps and "max gradient norm (None = off)" in helps
        ce_mode = _field(d, "model.neuron_params.ce_mode")
        assert ce_mode.size["width"] >= d.execute_script(
            "const c = document.createElement('canvas').getContext('2d');"
            "c.font = getComputedStyle(arguments[0]).font;"
            "return c.measureText('membrane_te').width;",
            ce_mode,
        )  # the longest option is not cut off
        Select(d.find_element(By.ID, "f-neuron")).select_by_value("celif")
        _set(d, "name", "browser-adding")
        _set(d, "model.hidden", "16, 16")
        _set(d, "task.params.val_size", "128")
        _set(d, "task.params.test_size", "128")
        _set(d, "training.batch_size", "32")
        _set(d, "training.eval_batch_size", "128")
        _set(d, "training.max_steps", "400")
        _set(d, "training.eval_every", "10")
        _set(d, "training.checkpoint_every", "100")
        _set(d, "training.lr", "0.005")
        Select(_field(d, "training.device")).select_by_value("cpu")
        # Two bad values: both 422 errors are shown inline, each next to its field, at once;
        # nothing is queued.
        _set(d, "task.params.seq_len", "-5")
        _set(d, "training.batch_size", "0")
        d.find_element(By.ID, "submit-job").click()
        error = _wait(
            d,
            lambda d: (
                d.find_element(By.CSS_SELECTOR, '[data-error-for="task.params.seq_len"]').text
            ),
            what="inline error",
        )
        assert "greater than or equal to 2" in error
        assert "invalid" in _field(d, "task.params.seq_len").get_attribute("class")
        other = d.find_element(By.CSS_SELECTOR, '[data-error-for="training.batch_size"]').text
        assert "greater than or equal to 1" in other
        _screenshot(d, "dashboard-form.png")
        _set(d, "task.params.seq_len", "20")
        _set(d, "training.batch_size", "32")
        d.find_element(By.ID, "submit-job").click()
        _wait(d, lambda d: "#/jobs/" in d.current_url, what="the job page")
        job_id = d.current_url.rsplit("/", 1)[-1]

        # The learning curve gains points live (SSE via fetch streaming, no page reload).
        d.execute_script("window.__sameDocument = true")
        first = _wait(
            d,
            lambda d: int(d.find_element(By.ID, "curve").get_attribute("data-points")),
            120,
            "first points",
        )
        status_then = d.find_element(By.ID, "job-status").text
        later = _wait(
            d,
            lambda d: (
                (n := int(d.find_element(By.ID, "curve").get_attribute("data-points"))) > first
                and n
            ),
            120,
            "more points",
        )
        assert later > first and status_then in ("queued", "running")
        assert d.execute_script("return window.__sameDocument") is True
        assert d.find_elements(By.CSS_SELECTOR, "#curve .scatterlayer .trace")  # drawn by plotly
        _wait(
            d,
            lambda d: d.find_element(By.ID, "job-status").text == "succeeded",
            240,
            "the job to finish",
        )
        _wait(
            d,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#checkpoints-table tbody tr"),
            30,
            "checkpoints",
        )
        assert d.find_element(By.ID, "job-progress-text").text == "step 400 / 400"

        # Predict panel (not MNIST): load a test sample as JSON, predict, see value and raster.
        d.find_element(By.ID, "load-sample").click()
        _wait(
            d,
            lambda d: (
                d.find_element(By.ID, "predict-json").get_attribute("value").startswith("[[[")
            ),
            what="sample",
        )
        Select(d.find_element(By.ID, "predict-layer")).select_by_value("1")
        d.find_element(By.ID, "predict-btn").click()
        summary = _wait(
            d, lambda d: d.find_element(By.ID, "predict-summary").text, 240, "prediction"
        )
        assert summary.startswith("Predicted value") and "target" in summary
        # The raster shows layer 1's spikes for that sample: the same spikes, at the same
        # (timestep, neuron) points, as the API returns for the same request.
        with srv.client() as api:
            r = api.post(
                f"/api/v1/jobs/{job_id}/predict",
                json={
                    "inputs": json.loads(d.find_element(By.ID, "predict-json").get_attribute("value")),
                    "checkpoint": d.find_element(By.ID, "predict-checkpoint").get_attribute("value"),
                    "return": ["spikes"],
                    "spikes_layer": 1,
                },
            )  # fmt: skip
        assert r.status_code == 200, r.text
        expected = r.json()["spikes"]["rasters"][0]
        assert len(expected["t"]) > 0  # a trained layer fires: an empty raster would be a bug
        raster = d.find_element(By.ID, "raster")
        assert int(raster.get_attribute("data-spikes")) == len(expected["t"])
        z = d.execute_script("return arguments[0].data[0].z;", raster)  # [neuron][t] 0/1
        drawn = sorted((t, n) for n, row in enumerate(z) for t, v in enumerate(row) if v)
        assert drawn == sorted(zip(expected["t"], expected["neuron"], strict=True))
        assert f"layer 1 ({len(expected['t'])} spikes)" in raster.text
        assert "WebGL" not in raster.text  # drawn as an image, no WebGL needed
        # The CE-LIF job shows its TE cosine-similarity heatmap.
        _wait(
            d,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#te-heatmap .heatmaplayer"),
            60,
            "TE heatmap",
        )
        time.sleep(0.5)
        shot = _screenshot(d, "dashboard-job.png")
        assert shot.stat().st_size > 10_000

        # A bad pasted payload shows the 422 naming the expected shape.
        d.find_element(By.ID, "predict-json").clear()
        d.find_element(By.ID, "predict-json").send_keys("[[[0.5, 1.0], [0.2, 0.0]], [[0.1, 0.0]]]")
        d.find_element(By.ID, "predict-btn").click()
        err = _wait(d, lambda d: d.find_element(By.ID, "predict-error").text, 30, "predict error")
        assert "F=2" in err

        # An MNIST job (registered as the worker would): pick a test digit, then draw one.
        data = tmp_path / "data"
        mnist_job = make_job(
            f"sqlite:///{(data / 'celif.db').resolve()}",
            data / "storage",
            trained["seq_mnist"],
            owner="admin",
        )
        d.get(f"{srv.url}/#/jobs/{mnist_job}")
        _wait(
            d,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples canvas")) == 10,
            60,
            "MNIST test digits",
        )
        digit = d.find_elements(By.CSS_SELECTOR, "#samples canvas")[0]
        assert digit.get_attribute("data-label") == "7"
        digit.click()
        d.find_element(By.ID, "predict-btn").click()
        summary = _wait(
            d, lambda d: d.find_element(By.ID, "predict-summary").text, 240, "MNIST prediction"
        )
        assert summary.startswith("Predicted class") and "target 7" in summary
        bars = d.find_elements(By.CSS_SELECTOR, "#probabilities .bars .point")
        assert len(bars) == 10
        canvas = d.find_element(By.ID, "draw-canvas")
        ActionChains(d).move_to_element_with_offset(
            canvas, -20, -90
        ).click_and_hold().move_by_offset(40, 0).move_by_offset(-30, 170).release().perform()
        d.find_element(By.ID, "predict-btn").click()
        _wait(
            d,
            lambda d: (
                "target" not in (t := d.find_element(By.ID, "predict-summary").text)
                and t.startswith("Predicted class")
            ),
            60,
            "prediction of the drawing",
        )
        assert d.find_element(By.ID, "draw-canvas").get_attribute("class") == "selected"
        _wait(
            d,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#te-heatmap .heatmaplayer"),
            60,
            "TE heatmap",
        )
        assert not d.find_element(By.ID, "cancel-btn").is_displayed()  # a finished job
        time.sleep(0.5)
        _screenshot(d, "dashboard-mnist.png")
        assert d.find_element(By.ID, "job-lineage").text == ""

        # A run continued from that job's checkpoint links back to it (its curve starts there).
        # (Registered as the API stores one, without a worker training it meanwhile.)
        db_url = f"sqlite:///{(data / 'celif.db').resolve()}"
        continued = make_job(
            db_url, data / "storage", trained["seq_mnist"], owner="admin", with_checkpoint=False
        )
        with session_scope(db_url) as session:
            row = session.get(Job, continued)
            row.spec = {**row.spec, "init_from": {"job": mnist_job, "checkpoint": "latest"}}
        d.get(f"{srv.url}/#/jobs/{continued}")
        lineage = _wait(
            d, lambda d: d.find_element(By.ID, "job-lineage").text, 30, "the continued run's source"
        )
        assert lineage == f"continues job {mnist_job} from its latest checkpoint"
        # (read in one script: the header is re-rendered on every update of the job)
        href = d.execute_script("return document.querySelector('#job-lineage a').href")
        assert href.endswith(f"#/jobs/{mnist_job}")

        # A job that failed before any metric: its plot says so (not "waiting for metrics").
        failed_job = make_job(
            db_url, data / "storage", trained["adding"], owner="admin", with_checkpoint=False
        )
        with session_scope(db_url) as session:
            row = session.get(Job, failed_job)
            row.status, row.step, row.error = "failed", 0, "out of memory: (a test's reason)"
        d.get(f"{srv.url}/#/jobs/{failed_job}")
        _wait(
            d,
            lambda d: "job failed" in d.find_element(By.ID, "curve").text,
            30,
            "the failed job's plot",
        )
        assert "waiting for metrics" not in d.find_element(By.ID, "curve").text
        assert "out of memory" in d.find_element(By.ID, "job-error").text

        # The Datasets page says what to upload.
        d.find_element(By.CSS_SELECTOR, 'nav a[href="#/datasets"]').click()
        hint = _wait(d, lambda d: d.find_element(By.ID, "datasets-empty").is_displayed(), 30)
        assert hint
        page = d.find_element(By.ID, "view-datasets").text
        assert "[N, T, F]" in page and "[N, T]" in page
        _screenshot(d, "dashboard-datasets.png")

        # The job list shows the jobs with their live status.
        d.find_element(By.CSS_SELECTOR, 'nav a[href="#/"]').click()
        rows = _wait(
            d, lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr"), 30, "job rows"
        )
        assert {r.get_attribute("data-job-id") for r in rows} == {
            job_id,
            mnist_job,
            continued,
            failed_job,
        }
        # Refused requests (the wrong token, the 422s above) are logged by Chrome; errors are not.
        severe = [
            e
            for e in d.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
        ]
        assert not severe, severe


def test_study_page(browser, tmp_path):
    """A study of two tiny trials run by the embedded server's worker (one at a time): the
    study page's table fills in (sortable, a link to each trial) and the curves overlay."""
    d = browser
    with EmbeddedServer(tmp_path / "data") as srv:
        base = {
            "task": {"name": "adding", "params": {"seq_len": 10, "val_size": 64, "test_size": 64}},
            "model": {"neuron": "celif", "hidden": [8]},
            "training": {"max_steps": 40, "batch_size": 32, "eval_batch_size": 64,
                         "eval_every": 10, "checkpoint_every": 20, "device": "cpu"},
        }  # fmt: skip
        body = {
            "name": "lr sweep",
            "base": base,
            "search": {"type": "grid", "params": {"training.lr": [0.02, 0.002]}},
            "objective": {"metric": "val_mse", "mode": "min"},
            "max_concurrent": 1,
        }
        with srv.client() as api:
            r = api.post("/api/v1/studies", json=body)
            assert r.status_code == 201, r.text
            study = r.json()
        d.get(srv.url + "/")
        d.execute_script("localStorage.setItem('celif_token', arguments[0])", srv.token)
        d.get(f"{srv.url}/#/studies")
        link = _wait(
            d, lambda d: d.find_elements(By.CSS_SELECTOR, "#studies-table tbody a"), 30, "list"
        )
        assert link[0].text == "lr sweep"
        link[0].click()
        _wait(d, lambda d: d.find_element(By.ID, "view-study").is_displayed(), 30, "study page")

        def finished(d):  # read in the page: the summary is re-rendered every poll
            script = "return (document.getElementById('study-status') || {}).textContent"
            return d.execute_script(script) == "completed"

        _wait(d, finished, 240, "the study to complete")
        _wait(
            d,
            lambda d: d.find_element(By.ID, "study-curves").get_attribute("data-traces") == "2",
            30,
            "two overlaid curves",
        )
        rows = d.find_elements(By.CSS_SELECTOR, "#study-table tbody tr")
        assert [r.get_attribute("data-status") for r in rows] == ["succeeded", "succeeded"]
        heads = [h.text for h in d.find_elements(By.CSS_SELECTOR, "#study-table th")]
        assert heads[:3] == ["#", "training.lr", "status"]
        assert "best: trial" in d.find_element(By.ID, "study-summary").text
        # sort by the field, descending on a second click
        header = d.find_element(By.CSS_SELECTOR, '#study-table th[data-key="field:training.lr"]')
        header.click()
        d.find_element(By.CSS_SELECTOR, '#study-table th[data-key="field:training.lr"]').click()
        ids = [
            r.get_attribute("data-job-id")
            for r in d.find_elements(By.CSS_SELECTOR, "#study-table tbody tr")
        ]
        assert ids == [study["trials"][0]["job_id"], study["trials"][1]["job_id"]]  # 0.02 first
        d.find_element(By.CSS_SELECTOR, '#study-table th[data-key="field:training.lr"]').click()
        first = d.find_element(By.CSS_SELECTOR, "#study-table tbody tr a")
        assert first.get_attribute("href").endswith(f"#/jobs/{study['trials'][1]['job_id']}")
        _screenshot(d, "dashboard-study.png")
        first.click()
        _wait(d, lambda d: d.find_element(By.ID, "view-job").is_displayed(), 30, "trial page")
        severe = [
            e
            for e in d.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
        ]
        assert not severe, severe


def test_a_queued_job_says_which_worker_it_waits_for(browser, tmp_path):
    """A cuda job with no GPU worker online: the job page and the job list say so, in red. The
    job row is stored without a message (the embedded worker takes every queue) and the worker's
    registry row is marked stopped (refreshes are 10 min apart here), so nothing races it."""
    from jobstore import workers
    from jobstore.db.models import User, Worker

    d = browser
    data = tmp_path / "data"
    slow = {"CELIF_WORKER_ANNOUNCE_INTERVAL_S": "600", "CELIF_WORKER_OFFLINE_AFTER_S": "1200"}
    with EmbeddedServer(data, extra_env=slow) as srv:
        db_url = f"sqlite:///{(data / 'celif.db').resolve()}"
        with srv.client() as api:
            spec = {
                "task": {"name": "adding", "params": {"seq_len": 10}},
                "model": {"neuron": "celif", "hidden": [8]},
                "training": {"max_steps": 40, "device": "cuda"},
            }
            r = api.post("/api/v1/jobs:validate", json=spec)
            assert r.status_code == 200, r.text
            full = r.json()["spec"]

            def announced():
                return any(w["online"] for w in api.get("/api/v1/workers").json()["items"])

            _wait(d, lambda _: announced(), 60, "the embedded worker to announce itself")
        with session_scope(db_url) as session:
            (worker_id,) = session.scalars(select(Worker.id)).all()
            workers.mark_stopped(session, worker_id)
            owner = session.scalars(select(User).where(User.name == "admin")).one()
            job = Job(owner_id=owner.id, name="needs-a-gpu", task_name="adding", neuron="celif",
                      spec=full, status="queued", max_steps=40)  # fmt: skip
            session.add(job)
            session.flush()
            job_id = job.id
        d.get(srv.url + "/")
        d.execute_script("localStorage.setItem('celif_token', arguments[0])", srv.token)
        d.get(f"{srv.url}/#/jobs/{job_id}")

        def waiting(d):
            node = d.find_element(By.ID, "job-waiting")
            return node.text if "none is online" in node.text else None

        text = _wait(d, waiting, 30, "the waiting_for line")
        assert text.startswith("queue gpu: waiting for a GPU worker: none is online (last seen")
        assert d.find_element(By.ID, "job-waiting").get_attribute("class") == "error"
        d.get(f"{srv.url}/#/jobs")
        row = _wait(
            d,
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{job_id}"]'),
            30,
            "the job in the list",
        )
        assert "no gpu worker online" in row[0].text
        _screenshot(d, "dashboard-waiting-for-worker.png")
