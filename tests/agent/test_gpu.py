"""GPU backends against recorded tool output; the timeout wrapper; job mapping."""

import json
import time
from pathlib import Path

import pytest

from emitter import contract as c
from emitter.gpu import detect
from emitter.gpu.base import GpuError, TimedBackend
from emitter.gpu.jobs import JobMap, parse_gpu_list
from emitter.gpu.replay import ReplayBackend, parse_amd_smi_metric_json, parse_nvidia_smi_xml
from tests.helpers import wait_for

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
    # [] while the hung thread has not finished yet: wait on that, not a guess
    got = wait_for(tb.sample, 10, what="the hung GPU call to return")
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
    "nvmlDeviceGetTemperatureV nvmlMemory_v2 nvmlDeviceGetMinorNumber nvmlDeviceGetMigMode "
    "nvmlDeviceGetMaxMigDeviceCount nvmlDeviceGetMigDeviceHandleByIndex NVML_DEVICE_MIG_ENABLE "
    "nvmlDeviceGetCurrentClocksEventReasons "
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


# ---------------------------------------------------------------- recorded outputs
REC = FIX / "recorded"
A100 = REC / "telegraf-a100-sxm4-mig-535.xml"
T4 = REC / "telegraf-tesla-t4-515.xml"
ADA = REC / "telegraf-rtx4000-ada-595.xml"
MIB = 1024 * 1024


def test_recorded_a100_mig_driver_535():
    (g,) = parse_nvidia_smi_xml(A100.read_text())
    m = g.metrics
    assert (g.index, g.model, g.uuid) == (1, "NVIDIA A100-SXM4-80GB", "GPU-513536b6-7d19-9063-b049-1e69664bb298")
    assert g.mig is True and g.mig_devices == 4
    assert m[c.M_GPU_UTILIZATION] is None  # N/A in MIG mode: unknown, not 0
    assert m[c.M_GPU_MEMORY_USAGE] == 50 * MIB and m[c.M_GPU_MEMORY_LIMIT] == 81920 * MIB
    assert m[c.M_GPU_POWER] == pytest.approx(67.03) and m[c.M_GPU_TEMPERATURE] == 27
    assert m[c.M_GPU_CLOCK_SM] == 1275 and m[c.M_GPU_THROTTLE] == 0
    assert (m[c.M_GPU_ECC_SBE], m[c.M_GPU_ECC_DBE]) == (0, 0)
    assert m[c.M_GPU_RETIRED_PAGES] is None  # remapped_rows and retired_pages both N/A


def test_sram_uncorrectable_of_drivers_up_to_535_is_counted():
    """Derived from the verbatim 535 recording: 3 uncorrectable SRAM errors
    (the single <sram_uncorrectable> element) were read as 0 before."""
    text = A100.read_text()
    vol = "<volatile>\n                <sram_correctable>0</sram_correctable>\n" \
          "                <sram_uncorrectable>0</sram_uncorrectable>"
    assert text.count(vol) == 1
    (g,) = parse_nvidia_smi_xml(text.replace(vol, vol.replace(">0</sram_unc", ">3</sram_unc")))
    assert g.metrics[c.M_GPU_ECC_DBE] == 3 and g.metrics[c.M_GPU_ECC_SBE] == 0


def test_recorded_t4_driver_515_throttle_layout_and_power_readings():
    (g,) = parse_nvidia_smi_xml(T4.read_text())
    m = g.metrics
    assert (g.index, g.model, g.mig) == (0, "Tesla T4", None)
    assert m[c.M_GPU_UTILIZATION] == 0.0 and m[c.M_GPU_MEMORY_USAGE] == 1032 * MIB
    assert m[c.M_GPU_POWER] == pytest.approx(26.78) and m[c.M_GPU_TEMPERATURE] == 40
    assert m[c.M_GPU_CLOCK_SM] == 585 and m[c.M_GPU_THROTTLE] == 0  # clocks_throttle_reasons, all inactive
    assert (m[c.M_GPU_ECC_SBE], m[c.M_GPU_ECC_DBE], m[c.M_GPU_RETIRED_PAGES]) == (0, 0, 0)


def test_recorded_ada_driver_595_na_ecc_split_sram_and_average_power():
    (g,) = parse_nvidia_smi_xml(ADA.read_text())
    m = g.metrics
    assert g.model == "NVIDIA RTX 4000 SFF Ada Generation" and g.mig is None
    assert m[c.M_GPU_ECC_SBE] is None and m[c.M_GPU_ECC_DBE] is None  # ECC disabled: N/A
    assert m[c.M_GPU_POWER] == pytest.approx(8.81)  # average_power_draw, as nvmlDeviceGetPowerUsage
    assert m[c.M_GPU_THROTTLE] == 0x1 and m[c.M_GPU_RETIRED_PAGES] == 0
    assert m[c.M_GPU_TEMPERATURE] == 38 and m[c.M_GPU_MEMORY_LIMIT] == 20475 * MIB
    split = ADA.read_text().replace("<sram_uncorrectable_parity>N/A", "<sram_uncorrectable_parity>2", 1) \
        .replace("<sram_uncorrectable_secded>N/A", "<sram_uncorrectable_secded>1", 1) \
        .replace("<dram_uncorrectable>N/A", "<dram_uncorrectable>4", 1)
    (g,) = parse_nvidia_smi_xml(split)  # derived: both SRAM flavours and DRAM add up
    assert g.metrics[c.M_GPU_ECC_DBE] == 7 and g.metrics[c.M_GPU_ECC_SBE] is None


def test_pre_510_single_double_bit_layout_and_unknown_reason():
    """Element layout of driver 340 output (written here, not a recording)."""
    xml = """<nvidia_smi_log><gpu id="0000:0D:00.0"><product_name>Tesla K20m</product_name>
      <minor_number>3</minor_number><clocks_throttle_reasons>
      <clocks_throttle_reason_gpu_idle>Not Active</clocks_throttle_reason_gpu_idle>
      <clocks_throttle_reason_applications_clocks_setting>Active</clocks_throttle_reason_applications_clocks_setting>
      <clocks_throttle_reason_unknown>Active</clocks_throttle_reason_unknown></clocks_throttle_reasons>
      <ecc_errors><volatile><single_bit><device_memory>5</device_memory><total>5</total></single_bit>
      <double_bit><device_memory>2</device_memory><total>2</total></double_bit></volatile></ecc_errors>
      <power_readings><power_draw>48.05 W</power_draw></power_readings></gpu></nvidia_smi_log>"""
    (g,) = parse_nvidia_smi_xml(xml)
    assert g.index == 3 and (g.metrics[c.M_GPU_ECC_SBE], g.metrics[c.M_GPU_ECC_DBE]) == (5, 2)
    assert g.metrics[c.M_GPU_THROTTLE] == 0x2 | 0x8000000000000000
    assert g.metrics[c.M_GPU_POWER] == pytest.approx(48.05) and g.metrics[c.M_GPU_UTILIZATION] is None


def test_throttle_bits_are_nvml_s():
    nv = pytest.importorskip("pynvml")
    from emitter.gpu.nvsmi import NV_THROTTLE_BITS
    names = {"gpu_idle": "GpuIdle", "applications_clocks_setting": "ApplicationsClocksSetting",
             "sw_power_cap": "SwPowerCap", "hw_slowdown": "HwSlowdown", "sync_boost": "SyncBoost",
             "sw_thermal_slowdown": "SwThermalSlowdown", "hw_thermal_slowdown": "HwThermalSlowdown",
             "hw_power_brake_slowdown": "HwPowerBrakeSlowdown", "display_clocks_setting": "DisplayClockSetting"}
    for tag, name in names.items():
        assert NV_THROTTLE_BITS[tag] == getattr(nv, f"nvmlClocksEventReason{name}"), tag


def test_amd_recording_without_model_is_not_given_one():
    b = ReplayBackend(str(AMD))
    b.open()
    assert {s.model for s in b.sample()} == {None}
    assert {s.model for s in parse_amd_smi_metric_json(AMD.read_text())} == {None}


def _started(ctx, job_id, **job):
    return {c.R_CONTEXT: ctx, c.R_JOB: dict(job_id=job_id, **job)}


def test_uuid_claims_resolve_to_minor_numbers_including_mig_and_prefixes():
    from emitter.gpu.base import GpuSample
    (a100,) = parse_nvidia_smi_xml(A100.read_text())
    mig = GpuSample(index=5, uuid="GPU-aaaa1111-0000-0000-0000-000000000000", model="x", vendor="nvidia",
                    source="nvml", mig=True, mig_uuids=("MIG-bbbb2222-0000-0000-0000-000000000000",))
    jm = JobMap()
    # Slurm 25.11: UUIDs in CUDA_VISIBLE_DEVICES, seen before any GPU sample: waits.
    assert jm.observe(_started("prolog_slurmd", "41", cuda_visible_devices=a100.uuid)) == "claim"
    assert jm.by_uuid and jm.job_of(1) is None
    assert jm.learn([a100, mig]) is True and jm.job_of(1) == "41" and not jm.by_uuid
    jm.observe(_started("prolog_slurmd", "42", cuda_visible_devices="MIG-bbbb2222-0000-0000-0000-000000000000"))
    jm.observe(_started("prolog_slurmd", "43", cuda_visible_devices="GPU-513536B6"))  # unique prefix, any case
    assert jm.job_of(5) == "42" and jm.job_of(1) == "41,43"
    assert jm.indices({"cuda_visible_devices": f"{a100.uuid},MIG-bbbb2222"}) == [1, 5]
    back = JobMap()
    jm.observe(_started("prolog_slurmd", "44", cuda_visible_devices="GPU-ffff"))  # unknown: kept, not dropped
    back.load(json.loads(json.dumps(jm.dump())))
    assert back.by_gpu == jm.by_gpu and back.by_uuid == {"GPU-ffff": {"44": None}}
    jm.observe(_started("epilog_slurmd", "44"))
    assert not jm.by_uuid


def test_nvml_backend_prefers_current_calls_and_falls_back_on_old_drivers(monkeypatch):
    """The real nvidia-ml-py module with its driver calls replaced: the
    backend's choice of call and its fallbacks (no GPU here)."""
    nv = pytest.importorskip("pynvml")
    from types import SimpleNamespace
    from emitter.gpu.nvml import NvmlBackend

    calls = []

    def missing(name):
        def f(*a):
            calls.append(name)
            raise nv.NVMLError(nv.NVML_ERROR_FUNCTION_NOT_FOUND)
        return f

    def value(name, v):
        def f(*a):
            calls.append(name)
            return v
        return f

    mem = SimpleNamespace(used=3 << 30, total=80 << 30)
    for name, fn in {
        "nvmlDeviceGetTemperatureV": missing("TemperatureV"),
        "nvmlDeviceGetTemperature": value("Temperature", 61),
        "nvmlDeviceGetMemoryInfo": lambda h, version=None: (calls.append(f"Memory:{bool(version)}"), mem)[1],
        "nvmlDeviceGetMinorNumber": value("Minor", 6),
        "nvmlDeviceGetMigMode": missing("MigMode"),
        "nvmlDeviceGetUtilizationRates": value("Util", SimpleNamespace(gpu=40)),
        "nvmlDeviceGetPowerUsage": value("Power", 512500),
        "nvmlDeviceGetTotalEccErrors": value("Ecc", 0),
        "nvmlDeviceGetRemappedRows": value("Rows", (1, 0, 0, 0)),
        "nvmlDeviceGetCurrentClocksEventReasons": value("Reasons", 4),
        "nvmlDeviceGetName": value("Name", "NVIDIA H100 80GB HBM3"),
        "nvmlDeviceGetUUID": value("UUID", "GPU-1"),
        "nvmlDeviceGetClockInfo": value("Clock", 1980),
    }.items():
        monkeypatch.setattr(nv, name, fn)
    b = NvmlBackend()
    b.nv, b._handles = nv, [object()]
    (s,) = b.sample()
    assert s.index == 6 and s.mig is None and s.model == "NVIDIA H100 80GB HBM3"
    assert s.metrics[c.M_GPU_TEMPERATURE] == 61 and calls.index("TemperatureV") < calls.index("Temperature")
    assert "Memory:True" in calls and s.metrics[c.M_GPU_MEMORY_USAGE] == 3 << 30
    assert s.metrics[c.M_GPU_POWER] == 512.5 and s.metrics[c.M_GPU_THROTTLE] == 4
    monkeypatch.setattr(nv, "nvmlDeviceGetMemoryInfo",
                        lambda h, version=None: (_ for _ in ()).throw(nv.NVMLError(nv.NVML_ERROR_FUNCTION_NOT_FOUND))
                        if version else mem)
    monkeypatch.setattr(nv, "nvmlDeviceGetMinorNumber", missing("Minor"))
    (s,) = b.sample()
    assert s.metrics[c.M_GPU_MEMORY_LIMIT] == 80 << 30 and s.index == 0  # v1 fallback; enumeration position


# ---------------------------------------------------------------- OTLP names
def _full_sample(**kw):
    (s,) = parse_nvidia_smi_xml(T4.read_text())
    s.metrics[c.M_GPU_ECC_SBE], s.metrics[c.M_GPU_ECC_DBE] = 4, 1
    return {**s.as_dict("77"), "ts": 10**18, **kw}


def test_metrics_follow_hardware_semconv_names_kinds_and_schema():
    """Names checked against the opentelemetry-semantic-conventions package."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
    from opentelemetry.semconv._incubating.metrics import hw_metrics as hw
    from opentelemetry.semconv.schemas import Schemas

    from emitter import otlp
    req = otlp.metrics_request([_full_sample()], node="n1", cluster="c1", ts=10**18)
    rm = req.resource_metrics[0]
    assert rm.schema_url == c.SEMCONV_SCHEMA_URL == rm.scope_metrics[0].schema_url
    assert c.SEMCONV_SCHEMA_URL in {s.value for s in Schemas}
    by = {m.name: m for m in rm.scope_metrics[0].metrics}
    assert {hw.HW_GPU_UTILIZATION, hw.HW_GPU_MEMORY_USAGE, hw.HW_GPU_MEMORY_LIMIT, hw.HW_POWER,
            hw.HW_TEMPERATURE, hw.HW_ERRORS} <= set(by)
    assert {n for n in by if not n.startswith("hw.")} == {
        "hookscope.gpu.clock.sm", "hookscope.gpu.xid", "hookscope.gpu.retired_pages",
        "hookscope.gpu.throttle_reasons"}
    for n in (hw.HW_GPU_MEMORY_USAGE, hw.HW_GPU_MEMORY_LIMIT):  # UpDownCounters
        assert by[n].WhichOneof("data") == "sum" and not by[n].sum.is_monotonic
        assert by[n].sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    errs = by[hw.HW_ERRORS]
    assert errs.WhichOneof("data") == "sum" and errs.sum.is_monotonic and errs.unit == "{error}"
    pts = {otlp.attributes_dict(p.attributes)["error.type"]: p.as_int for p in errs.sum.data_points}
    assert pts == {"corrected": 4, "uncorrected": 1}
    for n in (hw.HW_POWER, hw.HW_TEMPERATURE, hw.HW_GPU_UTILIZATION):
        assert by[n].WhichOneof("data") == "gauge"
    a = otlp.attributes_dict(by[hw.HW_POWER].gauge.data_points[0].attributes)
    assert a["hw.type"] == "gpu" and a["hw.id"].startswith("GPU-") and a["hookscope.gpu.index"] == 0
    assert (by[hw.HW_POWER].unit, by[hw.HW_TEMPERATURE].unit) == ("W", "Cel")


def _legacy_request(now):
    """A metrics message as agents before the rename wrote it (gauges only)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from emitter.otlp import _attrs, _resource
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rm.resource, "n1", "c1")
    sm = rm.scope_metrics.add()
    for name, v in (("hw.gpu.power", 26.78), ("hw.gpu.temperature", 40.0), ("hw.gpu.ecc.errors.corrected", 4),
                    ("hw.gpu.ecc.errors.uncorrected", 1), ("hw.gpu.xid", 0), ("hw.gpu.clock.sm", 585.0),
                    ("hw.gpu.retired_pages", 0), ("hw.gpu.throttle_reasons", 0)):
        m = sm.metrics.add()
        m.name = name
        dp = m.gauge.data_points.add()
        dp.time_unix_nano = now
        if isinstance(v, int):
            dp.as_int = v
        else:
            dp.as_double = v
        _attrs(dp.attributes, {"hw.gpu.index": 0, "hw.id": "GPU-d37e67a5-91dd-3774-a5cb-99096249601a",
                               "hw.model": "Tesla T4", "slurm.job.id": "77", "hookscope.gpu.source": "replay"})
    return req.SerializeToString()


def test_collector_reads_new_and_legacy_names_into_the_same_row():
    import time
    from collector import decode
    from emitter import otlp
    now = time.time_ns()
    new = decode.decode_message(otlp.encode_metrics([_full_sample(ts=now)], node="n1", cluster="c1", ts=now),
                                "hookscope.metrics.c1.n1", 1, now)
    old = decode.decode_message(_legacy_request(now), "hookscope.metrics.c1.n1", 2, now)
    (rn,), (ro,) = new.rows["gpu_samples"], old.rows["gpu_samples"]
    cols = ("power_w", "temperature_c", "sm_clock_mhz", "ecc_sbe", "ecc_dbe", "xid", "retired_pages",
            "throttle_reasons")
    at = {col: i for i, col in enumerate(decode._GPU_VALUE_COLS, start=7)}
    assert {k: rn[at[k]] for k in cols} == {k: ro[at[k]] for k in cols}
    assert rn[at["ecc_sbe"]] == 4 and rn[at["ecc_dbe"]] == 1 and rn[3] == ro[3] == 0
    rows = otlp.samples_from_metrics(otlp.decode_metrics(_legacy_request(now)))
    assert {r["metric"] for r in rows} >= {c.M_GPU_POWER, c.M_GPU_ECC_SBE, c.M_GPU_XID}
    assert all(r[c.A_GPU_INDEX] == 0 for r in rows)


def test_hw_errors_of_other_components_are_not_gpu_rows():
    from emitter.otlp_metrics import sample_key
    assert sample_key("hw.errors", {"hw.type": "physical_disk", "error.type": "uncorrected"}) is None
    assert sample_key("hw.errors", {"hw.type": "gpu", "error.type": "uncorrected"}) == c.M_GPU_ECC_DBE
    assert sample_key("hw.errors", {"hw.type": "gpu", "error.type": "crc"}) is None
    assert sample_key("hw.gpu.xid", {}) == c.M_GPU_XID == sample_key("hookscope.gpu.xid", {})
