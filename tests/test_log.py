"""neftune/log.py: rank 0 prints, other ranks only warnings or messages marked for all ranks."""

from __future__ import annotations

from neftune.log import ALL_RANKS, get_logger, info


def test_rank0_prints_other_ranks_stay_quiet(capsys, monkeypatch):
    log = get_logger("neftune.test")
    monkeypatch.setenv("RANK", "0")
    log.info("hello from rank zero")
    assert capsys.readouterr().err == "[neftune] hello from rank zero\n"

    monkeypatch.setenv("RANK", "1")
    log.info("hidden")
    info("also hidden")
    assert capsys.readouterr().err == ""
    log.warning("a warning on rank 1")
    log.info("asked for", extra=ALL_RANKS)
    info("asked for too", all_ranks=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[neftune] a warning on rank 1", "[neftune] [rank 1] asked for", "[neftune] [rank 1] asked for too"]


def test_names_outside_the_package_are_nested_under_neftune():
    assert get_logger("mytool").name == "neftune.mytool"
    assert get_logger("neftune.assets").name == "neftune.assets"
