"""One router per resource: jobs, uploads, batches, schedules, callback secret, health."""
