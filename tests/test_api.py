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


def test_how_it_works_names_every_module_once():
    """README "How it works" names each module file of the library, eval/, plugins/ and gan/ exactly once."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("## How it works", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", section)
    files = [p for folder in ("adv_transport", "adv_transport/gan", "eval", "plugins")
             for p in sorted((root / folder).glob("*.py"))]
    for path in files:
        if path.name == "__init__.py":  # named with its folder, but for the core's own
            folder = path.parent.name
            prefix = "" if folder == "adv_transport" else folder + "/"
            hits = len(re.findall(rf"(?<![\w/])`{re.escape(prefix)}__init__\.py`", section))
            assert hits == 1, f"{path.relative_to(root)}: named {hits} times in How it works"
        else:
            assert path.name in named, f"{path.relative_to(root)} is not named in How it works"
    # a bare name is mentioned as often as there are files of that name (models.py: the core's and gan/'s)
    per_name = {}
    for path in files:
        if path.name != "__init__.py":
            per_name[path.name] = per_name.get(path.name, 0) + 1
    over = {n: named.count(n) for n in per_name if named.count(n) > per_name[n]}
    assert not over, f"named more often than there are such files in How it works: {over}"
