"""DICOM out: SR (TID 1500), SEG and key images from a job's inputs, written to the outbox."""
