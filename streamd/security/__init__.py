"""Security: SASL mechanisms (sans-IO), SCRAM credential and ACL stores, the authorizer, TLS.

Nothing here imports the Kafka front; numeric codes are Kafka's own so that they pass through.
"""
