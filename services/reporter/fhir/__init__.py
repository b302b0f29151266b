"""FHIR R4: builders, the read API's search, queries and responses, and the push client."""
