"""The concurrency pools (their limits are the instance's: `dagster.yaml`, `deploy/`)."""

# Ingestion, backfill and rebuild write the read model: one pool, size 1 by default.
READ_MODEL_POOL = "enrollment_read_model"
# One follow-up run at a time: two would race for the same due follow-ups.
FOLLOWUP_POOL = "broker_followups"
# One delivery run at a time: runs retry parked leads of any partition.
LEAD_DELIVERY_POOL = "crm_lead_delivery"
