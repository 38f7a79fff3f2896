"""Scheduler: Slurm topology from the plan, job submission through sbatch, job listing."""
