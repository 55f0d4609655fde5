# ctest `package` (tests/CMakeLists.txt): installs the kvsim build into a fresh prefix, checks the
# install tree, then configures, builds and runs the consumer project beside this script against it.
#   cmake -DBUILD_DIR=... -DWORK_DIR=... -DSOURCE_DIR=... -DSOURCE_ROOT=... -DLIBDIR=... -DVERSION=...
#         -DGENERATOR=... -DCXX=... [-DCONFIG=...] -P run.cmake
foreach(v BUILD_DIR WORK_DIR SOURCE_DIR SOURCE_ROOT LIBDIR VERSION GENERATOR CXX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run.cmake: -D${v}=... is required")
  endif()
endforeach()
set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${ARGN}\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} ${config_args})

# The layout README.md promises: headers under include/kvsim by their repository paths, the layers'
# static libraries, the programs, the CMake package.
foreach(f include/kvsim/sim/base/error.h include/kvsim/sim/strategies/strategy.h include/kvsim/sim/replay.h
          include/kvsim/sim/kernels/backend.h include/kvsim/sim/store/store.h include/kvsim/traces/reader.h
          include/kvsim/traces/model/runner.h include/kvsim/cuda/device.h
          ${LIBDIR}/libkvsim_base.a ${LIBDIR}/libkvsim_sim.a ${LIBDIR}/libkvsim_model.a ${LIBDIR}/libkvsim_store.a
          ${LIBDIR}/cmake/kvsim/kvsimConfig.cmake ${LIBDIR}/cmake/kvsim/kvsimConfigVersion.cmake
          ${LIBDIR}/cmake/kvsim/kvsimTargets.cmake bin/kvsim)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "the install tree lacks ${f} (prefix ${prefix})")
  endif()
endforeach()
# Nothing installed may point back into the source or the build tree.
file(GLOB cmake_files ${prefix}/${LIBDIR}/cmake/kvsim/*.cmake)
foreach(f ${cmake_files})
  file(READ ${f} text)
  foreach(dir ${SOURCE_ROOT} ${BUILD_DIR})
    string(FIND "${text}" "${dir}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} names ${dir}, a path outside the install tree")
    endif()
  endforeach()
endforeach()
run("installed kvsim --version" ${prefix}/bin/kvsim --version)
if(NOT out MATCHES "^kvsim ${VERSION}")
  message(FATAL_ERROR "installed kvsim --version printed '${out}', expected 'kvsim ${VERSION}'")
endif()

# The consumer: find_package(kvsim) through CMAKE_PREFIX_PATH as a downstream project would, built
# without optimization (one file; the compiler's time is most of this test's).
run("consumer configure" ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G "${GENERATOR}"
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE= -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
file(STRINGS ${WORK_DIR}/build/CMakeCache.txt kvsim_dir REGEX "^kvsim_DIR:")
if(NOT kvsim_dir STREQUAL "kvsim_DIR:PATH=${prefix}/${LIBDIR}/cmake/kvsim")
  message(FATAL_ERROR "the consumer found another kvsim: ${kvsim_dir}")
endif()
run("consumer build" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run("consumer run" ${WORK_DIR}/build/kvsim_consumer ${WORK_DIR}/tiny.h5)
message(STATUS "kvsim_consumer printed:\n${out}")
set(want "^strategy h2o budget=8\nreplay full T=40 P=20 mass=1\\.0000\nreplay h2o T=40 P=20 mass=0\\.[0-9]+\n$")
if(NOT out MATCHES "${want}")
  message(FATAL_ERROR "kvsim_consumer's output does not match ${want}")
endif()
