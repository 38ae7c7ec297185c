"""The source files a command runs (the workflow's code inputs): its imports, followed through the
project, inside functions too, and nothing it does not import."""

from src.cluster.code_inputs import files_of


def test_the_trainer_runs_the_training_package_and_not_the_report():
    files = files_of("src.dinov3_train")
    assert {"src/dinov3_train.py", "src/__init__.py", "src/training/fit.py", "src/training/optim.py",
            "src/training/refit.py", "src/training/cpu_budget.py", "src/models/backbone.py"} <= set(files)  # fmt: skip
    assert "src/report.py" not in files and "src/synth.py" not in files


def test_a_small_command_gets_only_its_own_files():
    files = files_of("src.synth")
    assert "src/synth.py" in files and not any(f.startswith("src/training/") for f in files)
    assert files == tuple(sorted(files))
