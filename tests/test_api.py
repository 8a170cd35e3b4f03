import importlib.util
import re
from pathlib import Path

import adv_transport as at


def test_the_public_api_is_sorted_and_every_name_has_a_one_line_summary():
    assert at.__all__ == sorted(at.__all__)
    for name in at.__all__:
        doc = (getattr(at, name).__doc__ or "").strip()
        summary = doc.split("\n\n")[0]
        assert doc and "\n" not in summary, f"{name}: {summary[:80]!r}"


def test_the_readme_names_are_exported():
    for name in ("ATL", "LangevinSampler", "Trainer", "NormalizedSGD", "AdaLR", "AdaDir", "evaluate", "load_model",
                 "load_run", "LinearSchedule", "CosineSchedule", "recipe", "Runtime"):
        assert name in at.__all__
    # every `at.<name>` and `adv_transport.<name>` the README writes is an exported name or a subpackage/module
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in set(re.findall(r"\b(?:at|adv_transport)\.([A-Za-z]\w*)", readme)):  # not __all__, __version__
        module = importlib.util.find_spec(f"adv_transport.{name}") is not None
        assert name in at.__all__ or module, name
