"""Deployment to microcontrollers: int8 integer-only MLPs, compact sparse storage, C code."""
