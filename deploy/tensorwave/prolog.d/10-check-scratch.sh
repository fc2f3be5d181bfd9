#!/bin/sh
# customer check: the job's scratch filesystem is mounted and writable
set -e
d="/scratch/${SLURM_JOB_USER:-nobody}"
mkdir -p "$d"
touch "$d/.prolog-ok"
echo "scratch ok for job ${SLURM_JOB_ID}"
