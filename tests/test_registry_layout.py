import importlib.util
import re
import tomllib

from tokenbook import paths, registry


def test_registry_has_all_66_chapters():
    chs = registry.chapters()
    assert [c.n for c in chs] == list(range(1, 67))
    assert len({c.slug for c in chs}) == 66
    assert {c.part for c in chs} == set(registry.PARTS)
    assert all(c.feasibility in registry.GRADES for c in chs)
    assert all(re.fullmatch(r"\d{4}\.\d{4,5}", c.arxiv) for c in chs)


def test_built_chapters_have_notebook_and_config():
    built = registry.built()
    assert "prepacking" in {c.slug for c in built}
    for c in built:
        assert c.notebook.exists() and c.config.exists()
    # every notebook on disk belongs to a registered chapter, in its part's folder
    for nb in paths.NOTEBOOKS.rglob("*.ipynb"):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        n, slug = nb.stem.split("-", 1)
        ch = registry.get(slug)
        assert ch.n == int(n) and nb.parent.name == ch.part


def test_kernels_import_as_tokenbook_kernels_only():
    import tokenbook.kernels
    assert tokenbook.kernels.__file__.startswith(str(paths.ROOT / "kernels"))
    assert importlib.util.find_spec("kernels") is None or "tokenbook" not in str(importlib.util.find_spec("kernels").origin)


def test_pyproject_lists_every_package():
    conf = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    on_disk = {"tokenbook." + ".".join(p.parent.relative_to(paths.ROOT / "src" / "tokenbook").parts)
               for p in (paths.ROOT / "src" / "tokenbook").rglob("__init__.py")}
    on_disk = {p.rstrip(".") for p in on_disk} | {"tokenbook.kernels"}
    assert listed == on_disk


def test_requirements_pin_exact_versions():
    lines = [l.split("#")[0].strip() for l in (paths.ROOT / "requirements.txt").read_text().splitlines()]
    pins = [l for l in lines if l]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^\s]*", p) for p in pins), pins
    names = {p.split("==")[0].lower() for p in pins}
    for needed in ("torch", "triton", "transformers", "tokenizers", "papermill", "hydra-core", "jupyter-book",
                   "matplotlib", "jupyterlab", "ipykernel", "pytest"):
        assert needed in names
    jb = next(p for p in pins if p.lower().startswith("jupyter-book=="))
    assert jb.split("==")[1].startswith("1.")
