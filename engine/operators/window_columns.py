"""Column names of the window steps' outputs and state tables, shared by their polars path
(`engine.operators.window`) and their native one (`engine.operators.tumbling_table`)."""

WINDOW_START = "window_start"
WINDOW_END = "window_end"
# State columns; a leading "__" keeps them apart from message fields and the envelope.
FIRST_SEQUENCE = "__first_sequence"
LAST_SEQUENCE = "__last_sequence"
FIRST_KEY = "__first_key"
MAX_EVENT_TIME = "__max_event_time"
ROWS_SEEN = "__rows_seen"
