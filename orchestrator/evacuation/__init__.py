"""Host evacuation: plan where each container of a host goes, then drain it as bounded move chains."""
