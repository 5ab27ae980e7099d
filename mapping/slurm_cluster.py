"""Start a dask-jobqueue SLURM cluster for ``aqqua map predict --scheduler ADDRESS``.

Usage (on a login node, inside the project's environment)::

    python mapping/slurm_cluster.py --jobs 8 --cores 16 --memory 64GB --walltime 02:00:00 \
        --queue normal --account myproj
    # prints: scheduler address tcp://10.0.0.5:8786 ; keep this process running, then:
    aqqua map predict --config mapping/configs/drago_copepoda.yaml --scheduler tcp://10.0.0.5:8786

Each SLURM job runs ``processes`` dask workers. Sites that refuse ``--mem`` per node (dask-jobqueue
issue 632) need ``--mem-per-cpu``: pass ``--no-mem --extra=--mem-per-cpu=4G``.
Prediction writes one Zarr region per task batch and marks it done, so a walltime kill only
loses the regions in flight: re-run the same command to resume.
"""

from __future__ import annotations

import argparse
import time


def make_cluster(args: argparse.Namespace):
    """Build the ``SLURMCluster`` from command-line arguments."""
    from dask_jobqueue import SLURMCluster

    extra = list(args.extra or [])
    return SLURMCluster(
        cores=args.cores,
        processes=args.processes,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        job_extra_directives=extra,
        job_directives_skip=["--mem"] if args.no_mem else [],
        scheduler_options={"port": args.port},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (cluster.scale(jobs=N))")
    p.add_argument("--adapt-max", type=int, default=0, help="use cluster.adapt(maximum_jobs=N) instead")
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--processes", type=int, default=2, help="dask worker processes per job")
    p.add_argument("--memory", default="32GB", help="memory per job")
    p.add_argument("--walltime", default="01:00:00")
    p.add_argument("--queue", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--interface", default=None, help="network interface, e.g. ib0")
    p.add_argument("--local-directory", default="$TMPDIR")
    p.add_argument("--log-directory", default="dask-logs")
    p.add_argument("--extra", action="append", help="extra #SBATCH directive (repeatable)")
    p.add_argument("--no-mem", action="store_true", help="do not emit #SBATCH --mem")
    p.add_argument("--port", type=int, default=8786)
    p.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    args = p.parse_args()

    cluster = make_cluster(args)
    if args.dry_run:
        print(cluster.job_script())
        cluster.close()
        return
    if args.adapt_max:
        cluster.adapt(minimum_jobs=1, maximum_jobs=args.adapt_max)
    else:
        cluster.scale(jobs=args.jobs)
    print(f"scheduler address {cluster.scheduler_address}")
    print(f"dashboard {cluster.dashboard_link}")
    try:
        while True:  # keep the scheduler alive until Ctrl-C
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
