"""moto server fixtures (AWS Secrets Manager backend tests)."""
