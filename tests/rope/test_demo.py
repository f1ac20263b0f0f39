"""The temporary main job (``python -m rope.demo``) runs and reports every method."""

from longctx.rope import ROPE_METHODS
from longctx.rope.demo import main


def test_demo_runs_every_method(capsys):
    main(["--length", "32", "--scale", "4"])
    lines = capsys.readouterr().out.splitlines()
    rows = {
        line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ROPE_METHODS
    }
    assert set(rows) == set(ROPE_METHODS)
    assert rows["default"][4] != "0.0%", "the pretrained RoPE has unseen angles at 4L"
    assert rows["linear"][5] != "0.00e+00" and rows["dynamic"][5] == "0.00e+00", "dynamic keeps short inputs"
