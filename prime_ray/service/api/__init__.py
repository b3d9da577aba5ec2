"""The gateway's HTTP layer: typed dependencies (`deps`), error answers (`errors`), one router per resource."""
