"""Open the dashboard of a running service in headless Chromium and check, for each given MNIST
job, what a user would look at: its learning curve (points drawn), its checkpoints table, and a
prediction on one of the test digits from the predict panel. Saves one screenshot per job.

    python bench/dashboard_check.py --url http://127.0.0.1:8600 --token "$(cat ../repro-data/token)" \
        --out docs/results/dashboard JOB_ID [JOB_ID ...]

Needs Debian's `chromium` and `chromium-driver` (as the browser test). Prints one line per job
and exits 1 if any check failed. The jobs may still be running (a long run's checkpoints and
curves are what is checked).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="celif-dashboard-check-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,2600",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )
    return webdriver.Chrome(service=service, options=options)


def wait(driver, condition, timeout: float, what: str):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except Exception as exc:
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}") from exc


def check_job(d, url: str, job_id: str, out: Path) -> str:
    d.get(f"{url}/#/jobs/{job_id}")
    points = wait(
        d,
        lambda d: int(d.find_element(By.ID, "curve").get_attribute("data-points") or 0),
        60,
        "the learning curve",
    )
    rows = wait(
        d, lambda d: d.find_elements(By.CSS_SELECTOR, "#checkpoints-table tbody tr"), 60, "rows"
    )
    digits = wait(
        d, lambda d: d.find_elements(By.CSS_SELECTOR, "#samples canvas")[:10], 60, "test digits"
    )
    label = digits[0].get_attribute("data-label")
    digits[0].click()
    started = time.perf_counter()
    d.find_element(By.ID, "predict-btn").click()
    summary = wait(d, lambda d: d.find_element(By.ID, "predict-summary").text, 240, "prediction")
    elapsed = time.perf_counter() - started
    status = d.find_element(By.ID, "job-status").text
    progress = d.find_element(By.ID, "job-progress-text").text
    d.save_screenshot(str(out / f"job-{job_id[:8]}.png"))
    if not summary.startswith("Predicted class") or f"target {label}" not in summary:
        raise RuntimeError(f"unexpected prediction summary {summary!r} (digit {label})")
    return (
        f"{job_id}: {status}, {progress}; curve {points} points; {len(rows)} checkpoints; "
        f"digit {label}: {summary.splitlines()[0]!r} in {elapsed:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", type=Path, default=Path("test-output/dashboard-check"))
    ap.add_argument("jobs", nargs="+", help="job ids (MNIST jobs with checkpoints)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    d = browser()
    failed = 0
    try:
        d.get(args.url + "/")
        wait(d, lambda d: d.find_element(By.ID, "view-signin").is_displayed(), 60, "sign-in")
        d.find_element(By.ID, "token-input").send_keys(args.token)
        d.find_element(By.ID, "signin-btn").click()
        wait(d, lambda d: d.find_element(By.ID, "view-jobs").is_displayed(), 60, "the job list")
        for job_id in args.jobs:
            try:
                print(check_job(d, args.url, job_id, args.out), flush=True)
            except Exception as exc:
                failed += 1
                d.save_screenshot(str(args.out / f"job-{job_id[:8]}-failure.png"))
                print(f"{job_id}: FAILED: {exc}", flush=True)
    finally:
        d.quit()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
