"""HL7 v2.5.1 results: the ORU^R01 message, MLLP transport, and the ACK's verdict."""
