"""One router per resource: jobs, uploads, batches, schedules, health."""
