"""Lightning callbacks: console logging, graceful interrupt, checkpoint callbacks, reports, predictions."""
