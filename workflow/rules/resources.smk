# Jobs never ask for more than the machine has without saying so. Locally, GPU jobs share the
# visible GPUs (a job asking for more runs on what there is: DDP matches one process, so only the
# speed changes). On SLURM, a job no node could hold stops the run before anything is submitted.
from snakemake.resources import Resource

from src.cluster.node_limits import Request, slurm_nodes, too_big, visible_gpus
from src.cluster.run_lock import hold as hold_results_lock

# Snakemake has not chosen the executor yet while it parses this file; `nodes` (--jobs) is set
# only for cluster executors, and remote_exec inside a cluster job.
LOCAL_RUN = workflow.resource_settings.nodes is None and not workflow.remote_exec
if LOCAL_RUN and "gpu" not in workflow.global_resources:  # --resources gpu=N still wins
    GPUS_HERE = visible_gpus()
    workflow.global_resources["gpu"] = Resource("gpu", GPUS_HERE)
    if config["train"]["gpus"] > GPUS_HERE:
        print(
            f"note: train.gpus is {config['train']['gpus']} but {GPUS_HERE} GPU(s) are visible here: each train job "
            f"runs on {GPUS_HERE or 'the CPU'} (same results, DDP matches one process; --resources gpu=N overrides)",
            file=sys.stderr,
        )


def slurm_request(job):
    return Request(job.rule.name, job.threads, int(job.resources.get("mem_mb", 0)), int(job.resources.get("gpu", 0)))


onstart:
    # Runs only when jobs will (no dry run, not inside a cluster job), before the first one starts.
    try:
        hold_results_lock(RESULTS)  # one run per results_dir, from any working directory
    except UserError as exc:
        raise WorkflowError(str(exc))
    # The executor is known from here on, and so is every job's final threads and resources.
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name.endswith("slurm"):
        jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]  # localrules run here
        problems = too_big([slurm_request(job) for job in jobs], slurm_nodes())
        if problems:
            raise WorkflowError("\n".join(problems))
