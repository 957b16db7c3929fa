"""Container stack of media-analysis-api: one spec, rendered to Pulumi and to compose."""
