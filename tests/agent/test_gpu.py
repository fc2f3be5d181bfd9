"""GPU backends against recorded tool output; the timeout wrapper; job mapping."""

import json
import time
from pathlib import Path

import pytest

from emitter import contract as c
from emitter.gpu.base import GpuError, TimedBackend, detect
from emitter.gpu.jobs import JobMap, parse_gpu_list
from emitter.gpu.replay import ReplayBackend, parse_amd_smi_metric_json, parse_nvidia_smi_xml

FIX = Path(__file__).resolve().parents[2] / "emitter" / "fixtures" / "gpu"
NV = FIX / "nvidia-smi-q-x-8xH100.xml"
AMD = FIX / "amd-smi-metric-8xMI300X.json"


def test_nvidia_smi_xml_values():
    s = parse_nvidia_smi_xml(NV.read_text())
    assert len(s) == 8 and [x.index for x in s] == list(range(8))
    g0, g2, g6 = s[0].metrics, s[2].metrics, s[6].metrics
    assert s[0].model == "NVIDIA H100 80GB HBM3" and s[0].uuid.startswith("GPU-")
    assert g0[c.M_GPU_UTILIZATION] == pytest.approx(0.97)
    assert g0[c.M_GPU_MEMORY_LIMIT] == 81559 * 1024 * 1024
    assert g0[c.M_GPU_MEMORY_USAGE] == 71234 * 1024 * 1024
    assert g0[c.M_GPU_POWER] == pytest.approx(612.45) and g0[c.M_GPU_TEMPERATURE] == 61
    assert g0[c.M_GPU_CLOCK_SM] == 1980 and g0[c.M_GPU_THROTTLE] == 0
    assert g2[c.M_GPU_THROTTLE] == 0x4  # sw_power_cap active
    assert s[7].metrics[c.M_GPU_THROTTLE] == 0x1  # idle
    assert g6[c.M_GPU_ECC_DBE] == 1 and g6[c.M_GPU_RETIRED_PAGES] == 1
    assert s[5].metrics[c.M_GPU_ECC_SBE] == 2


def test_amd_smi_json_both_shapes():
    text = AMD.read_text()
    a = parse_amd_smi_metric_json(text, "AMD Instinct MI300X")
    b = parse_amd_smi_metric_json(json.dumps({"gpu_data": json.loads(text)}))
    assert [x.metrics for x in a] == [x.metrics for x in b] and len(a) == 8
    m0 = a[0].metrics
    assert m0[c.M_GPU_UTILIZATION] == pytest.approx(0.98) and m0[c.M_GPU_POWER] == 684
    assert m0[c.M_GPU_MEMORY_LIMIT] == 196592 * 1024 * 1024 and m0[c.M_GPU_CLOCK_SM] == 2098
    assert m0[c.M_GPU_TEMPERATURE] == 71  # hotspot
    assert a[2].metrics[c.M_GPU_THROTTLE] == 1 | 2  # throttled, PPT
    assert a[6].metrics[c.M_GPU_ECC_DBE] == 1 and a[5].metrics[c.M_GPU_ECC_SBE] == 3


def test_bad_recordings_are_clear_errors(tmp_path):
    with pytest.raises(GpuError, match="nvidia-smi"):
        parse_nvidia_smi_xml("<html/>")
    with pytest.raises(GpuError, match="amd-smi"):
        parse_amd_smi_metric_json("{nope")
    with pytest.raises(GpuError, match="replay"):
        detect("replay")
    with pytest.raises(GpuError, match="unknown gpu backend"):
        detect("cuda")
    missing = ReplayBackend(tmp_path / "none.xml")
    with pytest.raises(GpuError, match="none.xml"):
        missing.open()


def test_hung_backend_times_out_marks_unhealthy_and_recovers():
    backend = ReplayBackend(str(NV), block=True)
    logs = []
    tb = TimedBackend(backend, timeout_s=0.2, log=logs.append)
    assert tb.open()
    t = time.monotonic()
    assert tb.sample() == []
    assert time.monotonic() - t < 1.0 and not tb.healthy and tb.timeouts == 1
    t = time.monotonic()
    assert tb.sample() == []  # still hung: returns at once, no new thread
    assert time.monotonic() - t < 0.05 and backend.calls == 1
    backend.block = None
    backend.close()  # the hung call returns
    time.sleep(0.05)
    got = tb.sample()
    assert len(got) == 8 and tb.healthy and all(s.ts for s in got)
    assert any("unhealthy" in m for m in logs)


def test_detect_none_and_replay():
    assert detect("none") is None
    tb = detect("replay", replay_path=str(AMD))
    assert tb.name == "replay" and len(tb.sample()) == 8


def test_job_map_claim_release_and_dcgm_dir(tmp_path):
    assert parse_gpu_list("0,2-3, 7") == [0, 2, 3, 7]
    assert parse_gpu_list("GPU-abc,MIG-1") == [] and parse_gpu_list(None) == []
    jm = JobMap()

    def started(ctx, job_id, **job):
        return {c.R_CONTEXT: ctx, c.R_JOB: dict(job_id=job_id, **job)}

    assert jm.observe(started("prolog_slurmd", "5", gpus="0,1")) == "claim"
    assert jm.observe(started("prolog_slurmd", "6", cuda_visible_devices="1,2")) == "claim"
    assert jm.job_of(0) == "5" and jm.job_of(1) == "5,6" and jm.gpus_of("6") == [1, 2]
    jm.write_dcgm_dir(str(tmp_path), range(4))
    assert (tmp_path / "1").read_text() == "5\n6\n" and (tmp_path / "3").read_text() == ""
    assert jm.observe(started("epilog_slurmd", "5")) == "release"
    assert jm.job_of(0) is None and jm.job_of(1) == "6"
    jm.write_dcgm_dir(str(tmp_path), range(4))
    assert (tmp_path / "0").read_text() == "" and (tmp_path / "1").read_text() == "6\n"
    assert jm.observe(started("prolog_task", "9", gpus="3")) is None


def test_job_map_stays_bounded_without_epilogs_and_round_trips():
    """Prologs whose epilogs never come (Epilog not wrapped, node rebooted)
    must not grow the map for ever: each GPU keeps its newest claims."""
    jm = JobMap(max_jobs=3)
    for j in range(1000):
        jm.observe({c.R_CONTEXT: "prolog_slurmd", c.R_JOB: {"job_id": str(j), "gpus": "0-7"}})
    assert all(list(v) == ["997", "998", "999"] for v in jm.by_gpu.values()) and len(jm.by_gpu) == 8
    jm.observe({c.R_CONTEXT: "prolog_slurmd", c.R_JOB: {"job_id": "997", "gpus": "0"}})  # re-claim: newest
    assert jm.job_of(0) == "997,998,999" and list(jm.by_gpu[0]) == ["998", "999", "997"]
    back = JobMap(max_jobs=3)
    back.load(json.loads(json.dumps(jm.dump())))  # the agent's state file
    assert back.by_gpu == jm.by_gpu
    back.load({"x": ["1"], "2": "not a list", "3": []})  # a damaged state file: nothing usable
    assert back.by_gpu == {}


NVML_NAMES = (
    "nvmlInit nvmlShutdown nvmlDeviceGetCount nvmlDeviceGetHandleByIndex nvmlEventSetCreate nvmlEventSetFree "
    "nvmlDeviceRegisterEvents nvmlEventTypeXidCriticalError NVMLError nvmlDeviceGetUUID nvmlEventSetWait_v2 "
    "nvmlDeviceGetUtilizationRates nvmlDeviceGetMemoryInfo nvmlDeviceGetPowerUsage nvmlDeviceGetTotalEccErrors "
    "NVML_MEMORY_ERROR_TYPE_CORRECTED NVML_MEMORY_ERROR_TYPE_UNCORRECTED NVML_VOLATILE_ECC "
    "nvmlDeviceGetRemappedRows nvmlDeviceGetRetiredPages NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS "
    "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR nvmlDeviceGetCurrentClocksThrottleReasons nvmlDeviceGetName "
    "nvmlDeviceGetTemperature NVML_TEMPERATURE_GPU nvmlDeviceGetClockInfo NVML_CLOCK_SM").split()


def test_nvml_backend_uses_only_names_the_real_binding_has_and_fails_clearly_without_driver():
    """No GPU here: this checks the installed nvidia-ml-py binding has every
    name the backend calls, and that a node without the driver gets a clear
    message and no backend (the agent keeps shipping spans)."""
    nv = pytest.importorskip("pynvml")
    assert [n for n in NVML_NAMES if not hasattr(nv, n)] == []
    logs = []
    assert detect("auto", log=logs.append) is None
    assert any("NVML init failed" in m and "driver" in m for m in logs)
