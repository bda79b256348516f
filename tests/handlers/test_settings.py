"""The operator's settings from its environment: a value it cannot run with is one line naming the variable and
what it takes (``trtop operator`` / ``trtop store`` exit 2), never a traceback; unset or empty is the default."""
from __future__ import annotations

import pytest

from trtop.config import Settings, SettingsError
from trtop.handlers import cli, gc

BAD = [
    ("TRTOP_WORKERS", "abc", "is not an integer"),
    ("TRTOP_WORKERS", "0", "from 1 to 1024"),
    ("TRTOP_METRICS_PORT", "70000", "from 0 to 65535"),
    ("TRTOP_METRICS_PORT", "8080.5", "is not an integer"),
    ("TRTOP_RECONCILE_INTERVAL_SECONDS", "0", "above 0"),
    ("TRTOP_AUTOSCALE_INTERVAL_SECONDS", "15s", "is not a number of seconds"),
    ("TRTOP_API_TIMEOUT_SECONDS", "nan", "above 0"),
    ("TRTOP_STORE_TIMEOUT_SECONDS", "inf", "above 0"),
    ("TRTOP_NODE_GRACE_SECONDS", "-1", "at least 0"),
    ("TRTOP_COALESCE_SECONDS", "-0.5", "at least 0"),
    ("TRTOP_GC_GRACE_SECONDS", "1d", "is not a number of seconds"),
    ("TRTOP_FETCH_MAX_BYTES", "16Gi", "an integer above 0"),
    ("TRTOP_FETCH_MAX_FILES", "0", "an integer above 0"),
    ("TRTOP_FETCH_DEADLINE_SECONDS", "-3", "a number above 0"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD)
def test_a_bad_number_names_its_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env({name: value})
    assert name in str(e.value) and says in str(e.value)


def test_unset_or_empty_is_the_default_and_good_values_are_read() -> None:
    d = Settings()
    assert Settings.from_env({"TRTOP_WORKERS": "", "TRTOP_COALESCE_SECONDS": " "}) == d
    s = Settings.from_env({"TRTOP_WORKERS": " 4 ", "TRTOP_METRICS_PORT": "0", "TRTOP_COALESCE_SECONDS": "0",
                           "TRTOP_RECONCILE_INTERVAL_SECONDS": "60", "TRTOP_FETCH_MAX_BYTES": "1000"})
    assert (s.workers, s.metrics_port, s.coalesce_seconds, s.resync_seconds) == (4, 0, 0.0, 60.0)
    assert s.fetch_policy.max_bytes == 1000


def test_settings_that_contradict_each_other() -> None:
    with pytest.raises(SettingsError, match="TRTOP_RETRY_MAX_SECONDS"):
        Settings.from_env({"TRTOP_RETRY_BASE_SECONDS": "10", "TRTOP_RETRY_MAX_SECONDS": "5"})
    with pytest.raises(SettingsError, match="TRTOP_PROMETHEUS_URL"):
        Settings.from_env({"TRTOP_WAKE_QUERY": "sum(x)"})
    with pytest.raises(SettingsError, match="TRTOP_WAKE_QUERY"):
        Settings.from_env({"TRTOP_WAKE_QUERY": "x{n=\"$ns\"}", "TRTOP_PROMETHEUS_URL": "http://p:9090"})
    with pytest.raises(SettingsError, match="TRTOP_STORE_SHARING"):
        Settings.from_env({"TRTOP_STORE_SHARING": "ml=a;vision=a"})
    with pytest.raises(SettingsError, match="TRTOP_STORE_SHARING"):
        Settings.from_env({"TRTOP_STORE_SHARING": "team-a"})


@pytest.mark.parametrize(("main", "argv", "prog"), [(cli.main, [], "trtop operator"),
                                                    (gc.main, ["gc", "--dry-run"], "trtop store")])
def test_the_commands_print_one_line_and_exit_2(main, argv, prog, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRTOP_WORKERS", "many")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"{prog}: TRTOP_WORKERS='many' is not an integer\n"
