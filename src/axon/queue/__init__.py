"""The job queue seam: ``base.JobQueue``; ``memory`` (embedded) and ``rabbitmq`` backends."""
