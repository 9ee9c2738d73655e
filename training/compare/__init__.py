"""Compare: the runs' curves read and packed (series), smoothed and bucketed (curves), and the page (views)."""
