"""The sidecar's log components and levels (remora/proxy/log_levels.py): flags and /logging's query."""
from __future__ import annotations

import io
import logging

import pytest

from remora.proxy import log_levels
from remora.proxy.log_levels import COMPONENTS, LevelError


@pytest.fixture
def restored():
    """Put the `remora` loggers back as they were: other tests rely on pytest's capture."""
    root = logging.getLogger("remora")
    saved = (list(root.handlers), root.level, root.propagate,
             {name: log_levels.logger(name).level for name in COMPONENTS})
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]
    for name, level in saved[3].items():
        log_levels.logger(name).setLevel(level)


def test_query_forms_are_envoys():
    """level= sets every component, COMPONENT=LEVEL one, paths= several; `warn` means warning."""
    assert log_levels.changes_from_query({"level": "debug"}) == dict.fromkeys(COMPONENTS, logging.DEBUG)
    assert log_levels.changes_from_query({"rbac": "debug"}) == {"rbac": logging.DEBUG}
    assert log_levels.changes_from_query({"paths": "rbac:trace, jwt:warn"}) == {
        "rbac": log_levels.TRACE, "jwt": logging.WARNING}


@pytest.mark.parametrize("query, named", [
    ({"rbac": "loud"}, "unknown log level 'loud'"),
    ({"nosuch": "debug"}, "unknown logger 'nosuch'"),
    ({"paths": "rbac"}, "'rbac': expected COMPONENT:LEVEL"),
    ({"paths": "rbac:debug,filter:debug"}, "unknown logger 'filter'"),
])
def test_bad_names_are_refused_naming_them(query, named):
    """A bad component or level is a LevelError that names it and lists what is accepted."""
    with pytest.raises(LevelError) as caught:
        log_levels.changes_from_query(query)
    assert named in str(caught.value)
    assert "use one of" in str(caught.value) or "expected" in str(caught.value)


def test_configure_writes_program_prefixed_lines_at_or_above_each_components_level(restored):
    """`remora proxy: <message>` on the stream; a component below its level writes nothing."""
    out = io.StringIO()
    log_levels.configure("remora proxy", logging.INFO, {"rbac": logging.DEBUG}, stream=out)
    log_levels.logger("rbac").debug("rbac: shown")
    log_levels.logger("jwt").debug("jwt: hidden")
    log_levels.logger("main").info("started")
    assert out.getvalue() == "remora proxy: rbac: shown\nremora proxy: started\n"
    log_levels.apply_levels({"main": logging.WARNING})
    log_levels.logger("main").info("not any more")
    assert "not any more" not in out.getvalue()


def test_listing_is_envoys_active_loggers(restored):
    """GET /logging's body: `active loggers:` then `  name: level` for every component."""
    log_levels.configure("remora proxy", logging.WARNING, {"jwt": logging.DEBUG}, stream=io.StringIO())
    lines = log_levels.listing().splitlines()
    assert lines[0] == "active loggers:"
    assert lines[1:] == [f"  {name}: {'debug' if name == 'jwt' else 'warning'}" for name in COMPONENTS]


def test_cli_flags_are_checked_by_argparse(capsys):
    """`--log-level loud` and `--component-log-level x:debug` stop the command with the reason."""
    from remora.cli import main
    for flags, named in ((["--log-level", "loud"], "unknown log level 'loud'"),
                         (["--component-log-level", "x:debug"], "unknown logger 'x'")):
        with pytest.raises(SystemExit) as caught:
            main(["proxy", "--mesh-config", "none.yaml", *flags])
        assert caught.value.code == 2
        assert named in capsys.readouterr().err
