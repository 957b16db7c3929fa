"""The reference media-analysis-api: the service the persistence patch is installed into."""
