"""Settings live in ServerOptions (hidden expert flags, no environment read at import), and the process
tuning is the server's: an embedded :class:`tritium.app.App` gets the same as the command line."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import urllib.request

import pytest

from tritium import app
from tritium.cli import _parser, parse_args
from tritium.frontends.busy_poll import BUSY_POLL
from tritium.options import ServerOptions
from tritium.scheduler import workers

from models import identity_graph, write_model
from server import free_port

REPO = ["--model-repository=/models"]


def test_expert_flags_set_the_options_and_stay_out_of_help():
    options = parse_args([*REPO, "--inline-execute-us=0", "--switch-interval-us=250", "--event-loop=asyncio",
                          "--busy-poll-us=0"])
    assert (options.inline_execute_us, options.switch_interval_us, options.event_loop, options.busy_poll_us) == \
        (0, 250, "asyncio", 0)
    defaults = parse_args(REPO)
    assert (defaults.inline_execute_us, defaults.switch_interval_us, defaults.event_loop, defaults.busy_poll_us) == \
        (150, 100, "auto", 200)
    assert defaults.inline_execute_us / 1e6 == workers.INLINE_EXECUTE_S
    text = _parser().format_help()
    assert not any(flag in text for flag in ("--inline-execute-us", "--switch-interval-us", "--event-loop",
                                             "--busy-poll-us"))


@pytest.mark.parametrize("flag", ["--inline-execute-us=-1", "--inline-execute-us=fast", "--switch-interval-us=0",
                                  "--event-loop=trio", "--busy-poll-us=-5"])
def test_bad_expert_flag_values_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        parse_args([*REPO, flag])
    assert flag.split("=")[0] in capsys.readouterr().err


def test_event_loop_choice():
    assert app.event_loop_factory("asyncio") is None
    try:
        import uvloop
    except ImportError:
        assert app.event_loop_factory("auto") is None
    else:
        assert app.event_loop_factory("auto") is uvloop.new_event_loop
        assert app.event_loop_factory("uvloop") is uvloop.new_event_loop


@pytest.fixture
def restore_process_tuning():
    interval, threshold, budget = sys.getswitchinterval(), gc.get_threshold(), BUSY_POLL.budget_s
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*threshold)
    BUSY_POLL.configure(budget * 1e6)
    gc.unfreeze()


def test_an_embedded_app_serves_and_tunes_the_process_like_the_cli(tmp_path, restore_process_tuning):
    write_model(str(tmp_path), "ident", identity_graph(), config="""
        backend: "onnxruntime"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
    """)
    port = free_port()
    options = ServerOptions(model_repositories=[str(tmp_path)], http_address="127.0.0.1", http_port=port,
                            allow_grpc=False, allow_metrics=False, switch_interval_us=300, inline_execute_us=0,
                            busy_poll_us=150)

    def get(path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read()

    async def main() -> None:
        embedded = app.App(options)
        await embedded.start()
        try:
            assert sys.getswitchinterval() == pytest.approx(300e-6)
            assert BUSY_POLL.budget_s == pytest.approx(150e-6)
            assert gc.get_threshold()[0] == app.GC_THRESHOLD
            assert gc.get_freeze_count() > 0
            status, _ = await asyncio.to_thread(get, "/v2/health/ready")
            assert status == 200
            status, body = await asyncio.to_thread(get, "/v2/models/ident")
            assert status == 200 and json.loads(body)["name"] == "ident"
            assert embedded.server.ready()
        finally:
            await embedded.stop()
        assert not embedded.server.live()

    asyncio.run(main())


def test_the_inline_bound_reaches_each_worker():
    from scheduler_harness import Recorder

    class Fast(Recorder):
        may_run_inline = True

    loop = asyncio.new_event_loop()
    try:
        off = workers.InstanceWorker(Fast("off_0"), loop, 0.0)
        default = workers.InstanceWorker(Fast("default_0"), loop)
        try:
            assert not off._adaptive and off._inline_s == 0
            assert default._adaptive and default._inline_s == workers.INLINE_EXECUTE_S
        finally:
            off.stop()
            default.stop()
    finally:
        loop.close()
