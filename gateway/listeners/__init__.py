"""Listeners: the network services that receive records (DICOM C-STORE and STOW-RS;
MLLP). Each stores what it receives before it acknowledges it."""
