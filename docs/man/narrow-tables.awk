# pandoc sizes man tables for 70 columns plus gaps, which is wider than an
# 80-column terminal's text: scale every "lw(Nn)" column to 85 %.
{
  line = $0
  out = ""
  while (match(line, /lw\([0-9.]+n\)/)) {
    w = substr(line, RSTART + 3, RLENGTH - 5) * 0.85
    out = out substr(line, 1, RSTART - 1) sprintf("lw(%.1fn)", w)
    line = substr(line, RSTART + RLENGTH)
  }
  print out line
}
