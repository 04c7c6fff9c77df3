"""`mmtrt dicom-node`: mmtrt as a DICOM application entity (Storage SCP, durable spool)."""
