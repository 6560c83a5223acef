"""Whole serving runs against real local-engine processes: every arm's rows and the summary, a server
killed mid-run, a server that never comes up, and SIGTERM -- nothing left running, no partial rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcr import config as cfgmod
from bcr.serving import runs, servers, summary

REPO = cfgmod.REPO_ROOT
# Small enough for seconds per arm, shaped like the default: a shared system prompt, distinct questions.
OVERLAY = {
    "serving": {
        "workloads": {
            "system_repeat": {
                "systems": 1,
                "system_len": 384,
                "questions": 6,
                "question_len": 16,
                "output_len": 4,
            }
        },
        "run": {"arms": ["bcr", "radix"], "warmup": 1, "timeout_s": 60},
        "local": {"kv_tokens": 8192, "chunk": 128},
    }
}


@pytest.fixture
def configs(tmp_path) -> list[str]:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    return [str(REPO / "config" / "config.yaml"), str(overlay)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(log_dir: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in sorted(log_dir.glob("*.ready.json"))]


def _run(configs, tmp_path, arms=("bcr", "radix"), force_miss=False):
    config = cfgmod.load(configs)
    written: dict[Path, pd.DataFrame] = {}

    def write(df, path):
        written[Path(path)] = df

    done = runs.run_workload(
        engine="local",
        workload="system_repeat",
        arms=list(arms),
        configs=configs,
        config=config,
        out=lambda arm, fm: tmp_path / ("fm" if fm else "arm") / f"{arm}.parquet",
        log_dir=tmp_path / "logs",
        force_miss=force_miss,
        write=write,
        log=lambda _m: None,
    )
    return done, written


def test_every_arm_and_its_force_miss_run_are_served_and_stopped(configs, tmp_path):
    done, written = _run(configs, tmp_path, force_miss=False)
    missed, missed_written = _run(configs, tmp_path, force_miss=True)
    done.update(missed)
    written.update(missed_written)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "arm/bcr.parquet", "arm/radix.parquet", "fm/bcr.parquet", "fm/radix.parquet",
    ]  # fmt: skip
    bcr, radix = done[("bcr", False)], done[("radix", False)]
    assert len(bcr) == 6 and bcr["error"].isna().all() and (bcr["output_tokens"] == 4).all()
    assert bcr["cached_tokens"].tolist() == [0] + [384] * 5  # the system prompt, once computed
    assert bcr["cached_tokens"].tolist() == radix["cached_tokens"].tolist()
    assert bcr["output_ids"].map(list).tolist() == radix["output_ids"].map(list).tolist()
    assert (done[("bcr", True)]["cached_tokens"] == 0).all() and (
        done[("radix", True)]["cached_tokens"] == 0
    ).all()
    assert (bcr["ttft_s"] > 0).all() and (bcr["e2e_s"] >= bcr["ttft_s"]).all()

    table = summary.summarise(pd.concat(done.values(), ignore_index=True))
    by = table.set_index("reuse")
    assert set(table["baseline"]) == {"radix"} and by.loc["cached", "cached_delta"] == 0
    assert by.loc["cached", "n"] == 6 and by.loc["cached", "outputs_equal"] == 6
    assert (
        by.loc["cached", "ttft_p50_low"]
        <= by.loc["cached", "ttft_p50_ratio"]
        <= by.loc["cached", "ttft_p50_high"]
    )
    # every server was stopped, every log kept
    pids = _pids(tmp_path / "logs")
    assert len(pids) == 4 and not any(_alive(p) for p in pids)
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == [
        "bcr.force_miss.log", "bcr.log", "radix.force_miss.log", "radix.log",
    ]  # fmt: skip


def test_a_server_killed_mid_run_fails_the_run_with_its_log_and_writes_nothing(configs, tmp_path):
    log_dir = tmp_path / "logs"
    killed: list[int] = []

    def kill_radix_once_serving():
        ready = log_dir / "radix.log.ready.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list(log_dir.glob("*.ready.json"))) != 2:
            time.sleep(0.1)
        time.sleep(1.0)  # both healthy: the client is warming up or serving
        pid = json.loads(ready.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_radix_once_serving, daemon=True)
    killer.start()
    big = {**OVERLAY["serving"]["workloads"]["system_repeat"], "questions": 200}
    with pytest.raises(servers.ServerFailed, match=r"radix server exited with code -9[\s\S]*last \d+ lines"):
        _run_big(configs, tmp_path, big)
    killer.join(5)
    assert killed
    assert not list(tmp_path.glob("arm/*.parquet"))
    assert not any(_alive(p) for p in _pids(log_dir))


def _run_big(configs, tmp_path, workload_cfg):
    overlay = Path(configs[1])
    data = yaml.safe_load(overlay.read_text())
    data["serving"]["workloads"]["system_repeat"] = workload_cfg
    overlay.write_text(yaml.safe_dump(data))
    return _run(configs, tmp_path, force_miss=False)


def test_a_server_that_never_comes_up_fails_with_the_tail_of_its_log(tmp_path):
    log = tmp_path / "dead.log"
    with servers.stopped_on_exit() as started:
        srv = servers.Server(
            "bcr",
            servers._popen(
                [sys.executable, "-c", "print('model not found: models/x'); raise SystemExit(3)"],
                dict(os.environ),
                log,
            ),
            log,
            lambda: None,
            timeout_s=30,
        )
        started.append(srv)
        with pytest.raises(
            servers.ServerFailed, match=r"exited with code 3 before becoming healthy[\s\S]*model not found"
        ):
            srv.wait_healthy()


def test_a_server_that_hangs_is_given_up_on_and_stopped(tmp_path):
    log = tmp_path / "hang.log"
    with servers.stopped_on_exit() as started:
        proc = servers._popen(
            [sys.executable, "-c", "import time; print('loading'); time.sleep(600)"], dict(os.environ), log
        )
        started.append(servers.Server("radix", proc, log, lambda: None, timeout_s=1.5))
        with pytest.raises(servers.ServerFailed, match=r"not healthy after 2s[\s\S]*loading"):
            started[0].wait_healthy()
    assert proc.poll() is not None


def test_sigterm_to_the_rule_stops_every_server_it_started(configs, tmp_path):
    """What Snakemake does to a job it cancels (and Ctrl-C does the same through KeyboardInterrupt)."""
    big = {**OVERLAY["serving"]["workloads"]["system_repeat"], "questions": 400}
    overlay = Path(configs[1])
    data = yaml.safe_load(overlay.read_text())
    data["serving"]["workloads"]["system_repeat"] = big
    overlay.write_text(yaml.safe_dump(data))
    log_dir = tmp_path / "logs"
    cmd = [sys.executable, "-m", "bcr.cli", "serving", "run", "--workload", "system_repeat",
           "--results", str(tmp_path / "results"), "--logs", str(log_dir)]  # fmt: skip
    for c in configs:
        cmd += ["--config", c]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(log_dir.glob("*.ready.json"))) < 2:
        time.sleep(0.1)
    pids = _pids(log_dir)
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert not any(_alive(p) for p in pids)
    assert not list((tmp_path / "results").rglob("*.parquet"))


@pytest.mark.parametrize(("arm", "force_miss"), [("bcr", False), ("unified_rust", True)])
def test_the_gpu_engine_launches_sglang_with_the_arm_and_the_shared_settings(
    monkeypatch, tmp_path, arm, force_miss
):
    """On the cluster each arm is ``python -m sglang.launch_server`` from the registry; on CPU only
    the command and environment are checked (what would start), never a server."""
    config = cfgmod.load(REPO / "config" / "a100.yaml")
    seen = {}

    def fake_popen(cmd, env, log):
        seen.update(cmd=cmd, env=env)
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(servers, "_popen", fake_popen)
    with servers.stopped_on_exit() as started:
        started.append(
            servers.start(
                "sglang", configs=[], config=config, arm=arm, log=tmp_path / "s.log", force_miss=force_miss
            )
        )
    cmd, env = seen["cmd"], seen["env"]
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    args = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert args["--model-path"] == "Qwen/Qwen2.5-7B-Instruct" and args["--host"] == "127.0.0.1"
    assert args["--page-size"] == "16" and args["--chunked-prefill-size"] == "8192"
    assert 0 < int(args["--port"]) < 65536
    assert args.get("--radix-cache-backend") == ("bcr" if arm == "bcr" else None)
    assert env.get("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND") == (None if arm == "bcr" else "rust")
    assert env.get("SGLANG_RADIX_FORCE_MISS") == ("1" if force_miss else None)


def test_the_local_engine_binds_the_loopback_interface_only(capsys):
    from bcr.serving import local

    with pytest.raises(SystemExit):
        local.main(["--config", str(REPO / "config" / "config.yaml"), "--arm", "bcr", "--host", "0.0.0.0"])
    assert "loopback interface only" in capsys.readouterr().err
