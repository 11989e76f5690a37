"""The consumer groups of the seed design (DESIGN "Consumer groups"): contract names."""

READ_MODEL_GROUP = "read-model-service"
BROKER_EMAIL_GROUP = "broker-email-service"
LEAD_PRODUCER_GROUP = "lead-producer-service"
LEAD_INTEGRATION_GROUP = "lead-integration-service"
# One ingestion run does the work of all three enrollment groups, so they advance together.
ENROLLMENT_GROUPS = (READ_MODEL_GROUP, BROKER_EMAIL_GROUP, LEAD_PRODUCER_GROUP)
