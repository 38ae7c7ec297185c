"""The Kaggle package's inference trusts nothing in its recipe.json: a model_dir that leaves the
package (absolute, '..', a link out) or a malformed recipe is one line and exit 2, before anything
is read, made or removed (issue #25)."""

import json
import os

import pytest

from src.kaggle_infer import main

FOLD_FILES = ("best.safetensors", "config.yaml", "extras.json", "last.safetensors", "last_state.pt", "history.csv",
              "oof.parquet", "metrics.json")  # fmt: skip


def _fold(folder):
    folder.mkdir(parents=True)
    for name in FOLD_FILES:
        (folder / name).write_text(f"{name} of {folder}\n")
    return folder


def _package(where, model_dir: str = "models/M1", recipe=None):
    pkg = where / "pkg"
    _fold(pkg / "models/M1/fold0")
    text = recipe if isinstance(recipe, str) else json.dumps(
        recipe if recipe is not None else {"members": [{"model_dir": model_dir, "weight": 1.0}], "postprocess": None})
    (pkg / "recipe.json").write_text(text)
    return pkg


def _infer(pkg, data, work, capfd) -> str:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(data), "--work-dir", str(work), "--device", "cpu"], package_dir=pkg)
    assert exc.value.code == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link"])
def test_a_model_dir_that_leaves_the_package_is_refused_before_anything_is_touched(how, demo_data, tmp_path, capfd):
    # Someone's training results, where the recipe's model_dir would put the work copy.
    victim = _fold(tmp_path / "kaggle/results/M1/fold0")
    outside = _fold(tmp_path / "results/M1/fold0").parent  # what the recipe points the package at
    model_dir = {"absolute": str(victim.parent), "dotdot": "../../results/M1", "link": "models/linked"}[how]
    pkg = _package(tmp_path / "kaggle", model_dir)
    if how == "link":
        os.symlink(outside, pkg / "models/linked")
    work = tmp_path / "kaggle/work"
    for _ in range(2):  # the second run of the old code removed what the first had linked
        err = _infer(pkg, demo_data, work, capfd)
        assert "recipe.json" in err and "leaves the package" in err and repr(model_dir) in err, err
        assert "python -m src.kaggle_package" in err
    assert sorted(p.name for p in victim.iterdir()) == sorted(FOLD_FILES)
    assert sorted(p.name for p in (outside / "fold0").iterdir()) == sorted(FOLD_FILES)
    assert not work.exists()  # nothing made


@pytest.mark.parametrize("text, said", [
    ("{not json", "not valid JSON"),
    ("{}", "no \"members\""),
    ("[]", "no \"members\""),
    ('{"members": []}', "no \"members\""),
    ('{"members": [{"weight": 1}]}', "members[0] has no \"model_dir\""),
    ('{"members": [{"model_dir": "models/M1"}]}', "members[0] weight"),
    ('{"members": [{"model_dir": "models/M1", "weight": "1"}]}', "members[0] weight"),
    ('{"members": [{"model_dir": "models/M1", "weight": 1}], "postprocess": 3}', "postprocess"),
    ('{"members": [{"model_dir": "models/M1", "weight": 1}], "predict": {"tta_scales": "big"}}', "predict"),
])  # fmt: skip
def test_a_malformed_recipe_is_one_line_naming_the_file_and_the_fix(text, said, demo_data, tmp_path, capfd):
    pkg = _package(tmp_path, recipe=text)
    err = _infer(pkg, demo_data, tmp_path / "work", capfd)
    assert str(pkg / "recipe.json") in err and said in err and "python -m src.kaggle_package" in err, err
    assert not (tmp_path / "work").exists()


def test_a_work_dir_whose_models_folder_is_the_package_is_refused(demo_data, tmp_path, capfd):
    """--work-dir W with the package at W/models: the work copies would replace the package's own folds."""
    pkg = tmp_path / "models"
    _fold(pkg / "models/M1/fold0")
    (pkg / "recipe.json").write_text(json.dumps({"members": [{"model_dir": "models/M1", "weight": 1.0}]}))
    err = _infer(pkg, demo_data, tmp_path, capfd)
    assert "--work-dir" in err and str(pkg) in err, err
    assert sorted(p.name for p in (pkg / "models/M1/fold0").iterdir()) == sorted(FOLD_FILES)



@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_the_package_build_refuses_a_model_dir_that_leaves_the_results(how, tmp_path):
    """A results recipe's '../../M' would be copied to <package>/models/../../M: outside the package."""
    from src.core.errors import UserError
    from src.packaging import wheelhouse
    from src.packaging.kaggle_package import build

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, version in wheelhouse.carried().items():
        (wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_text("")
    results = tmp_path / "runs/results"
    (results / "final").mkdir(parents=True)
    source = _fold(tmp_path / "src/M1/fold0").parent
    (source / "fold0/config.yaml").write_text("use_depth: false\n")
    model_dir = {"dotdot": "../../src/M1", "absolute": str(source)}[how]
    (results / "final/recipe.json").write_text(json.dumps({"members": [{"model_dir": model_dir, "weight": 1.0}]}))
    with pytest.raises(UserError, match=r"recipe\.json: members\[0\]\.model_dir .* leaves"):
        build(results, results / "kaggle", wheels_dir=wheels)
    assert sorted(p.name for p in results.iterdir()) == ["final"]  # nothing copied, nothing left behind
