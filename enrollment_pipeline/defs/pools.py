"""The concurrency pools (their limits are the instance's: `dagster.yaml`, `deploy/`)."""

# A rebuild rewrites every application: one at a time. (Ingestion and backfill runs have no
# pool: they run in parallel over lanes of partitions, one run per lane by the `enrollment/lane`
# tag limit, kept apart from every other writer by per-partition leases.)
READ_MODEL_POOL = "enrollment_read_model"
# One follow-up run at a time: two would race for the same due follow-ups.
FOLLOWUP_POOL = "broker_followups"
# One delivery run at a time: runs retry parked leads of any partition.
LEAD_DELIVERY_POOL = "crm_lead_delivery"
