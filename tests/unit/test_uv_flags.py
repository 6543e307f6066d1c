"""``tools/uv_flags.py``: pip's configured sources become uv flags, so ``make install`` resolves as pip would."""

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("uv_flags", ROOT / "tools" / "uv_flags.py")
uv_flags = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uv_flags)


def test_every_source_pip_would_use_becomes_a_flag():
    lines = ["global.cert='/etc/ssl/certs/ca-certificates.crt'",
             "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
             "global.find-links='/opt/wheels'",
             "global.constraint='/etc/xdg/pip/constraints.txt'",
             "user.timeout='5'"]
    flags = uv_flags.uv_flags(uv_flags.pip_config(lines))
    assert flags == ["--index-strategy", "unsafe-best-match",
                     "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
                     "--find-links", "/opt/wheels", "--constraint", "/etc/xdg/pip/constraints.txt"]


def test_environment_overrides_the_config_file_and_no_index_is_kept():
    lines = ["global.index-url='https://mirror.example/simple'", ":env:.index-url='https://other.example/simple'",
             ":env:.no-index='true'"]
    flags = uv_flags.uv_flags(uv_flags.pip_config(lines))
    assert flags == ["--index-strategy", "unsafe-best-match", "--index-url", "https://other.example/simple",
                     "--no-index"]


def test_no_configuration_gives_pip_s_own_behaviour_only():
    assert uv_flags.uv_flags(uv_flags.pip_config([])) == ["--index-strategy", "unsafe-best-match"]
