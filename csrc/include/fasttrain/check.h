// Error macros shared by the C++ and CUDA modules: they throw, pybind11 turns the throw into a
// Python ValueError / RuntimeError, and the process never exits from inside a kernel.
#pragma once
#include <sstream>
#include <stdexcept>

#define FT_CHECK(cond, msg)                                                        \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::ostringstream ft_check_os_;                                             \
      ft_check_os_ << msg;                                                         \
      throw std::invalid_argument(ft_check_os_.str());                             \
    }                                                                              \
  } while (0)
