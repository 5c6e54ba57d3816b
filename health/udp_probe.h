// The udp probe is declared beside the dns probe: both are DatagramProbes.
#pragma once

#include "health/dns_probe.h"
