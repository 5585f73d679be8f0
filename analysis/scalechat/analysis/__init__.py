"""Analysis of load-test results; imports nothing from services/."""
