// The tcp probe is the simplest StreamProbe and lives with it.
#pragma once

#include "health/stream_probe.h"
