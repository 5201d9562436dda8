"""A big predict body is refused on its value count before any JSON is parsed: bounded memory
(the in-process API's peak RSS is measured around the request)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.service.predict_helpers import make_job


def _kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def test_predict_body_over_the_value_limit_is_refused_unparsed(pclient, db, psettings, trained):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    limit = psettings.max_predict_values
    row = "[" + ",".join(["[0.5,1]"] * 24) + "]"  # T=24 steps of F=2
    n = limit // 48 + 100  # a little over the limit
    body = b'{"inputs":[' + ",".join([row] * n).encode() + b"]}"
    for path in (f"/api/v1/jobs/{job}/predict", f"/api/v1/jobs/{job}/streams/nope/chunks"):
        before = _kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        r = pclient.post(path, content=body, headers={"Content-Type": "application/json"})
        grew_mib = (_kib("VmHWM") - before) / 1024
        assert r.status_code == 422, r.text[:300]
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "inputs"] and "settings.max_predict_values" in err["msg"]
        print(f"{len(body) / 2**20:.1f} MiB body on {path.split('/')[-1]}: +{grew_mib:.1f} MiB")
        assert grew_mib < 48  # parsed, these 2 M numbers took ~250 MiB
    # Under the limit the same route parses and answers as before.
    ok = pclient.post(f"/api/v1/jobs/{job}/predict", json={"inputs": [[[0.5, 1.0]] * 24]})
    assert ok.status_code == 200, ok.text
