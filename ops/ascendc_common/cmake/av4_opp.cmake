# Shared CMake of our CANN custom-op packages: one package per op family, vendor "ascend_v4_<family>", built with the
# ASC CMake package of the CANN toolkit (>= 8.3): find_package(ASC) + npu_op_package / npu_op_code_gen /
# npu_op_library / npu_op_kernel_sources / npu_op_kernel_library / npu_op_package_add.
#
# A family's three small CMakeLists call, in this order:
#   <family>/ascendc/CMakeLists.txt             include(this file); av4_opp_package(<family>) (it adds op_host/
#                                               then op_kernel/)
#   <family>/ascendc/op_host/CMakeLists.txt     av4_opp_host(SOURCES <host .cpp/.cc files>)
#   <family>/ascendc/op_kernel/CMakeLists.txt   av4_opp_kernels(OPS <OpType> <kernel .cpp> [<OpType> <kernel .cpp>...])
# The driver is ops/ascendc_common/build_opp.sh (it passes ASCEND_COMPUTE_UNIT and ASCEND_CANN_PACKAGE_PATH).
# tests/ops/test_ascendc_packaging.py checks the op lists against the OpDefs and the Python bindings.
include_guard(GLOBAL)

set(AV4_OPP_FAMILIES mhc moe attention engram)
set(AV4_OPP_SOCS "ascend910b;ascend910_93")   # the AddConfig(...) of every OpDef
# headers the kernels of every family include (pipe_sync.h, cube_tiles.h, stream_rows.h): staged next to each family's kernels
set(AV4_OPP_SHARED_KERNEL_DIR ${CMAKE_CURRENT_LIST_DIR}/../op_kernel)

# av4_opp_package(<family>): check the family, find CANN's ASC package (one clear error when it is missing) and
# declare the run package; then add the family's op_host/ and op_kernel/ (first the host: the kernels need the code
# generated from the OpDefs). Sets AV4_FAMILY, AV4_FAMILY_DIR, vendor_name and package_name for the subdirectories.
macro(av4_opp_package family)
  if(NOT "${family}" IN_LIST AV4_OPP_FAMILIES)
    message(FATAL_ERROR "av4_opp_package: unknown op family '${family}' (one of: ${AV4_OPP_FAMILIES})")
  endif()
  set(AV4_FAMILY ${family})
  set(AV4_FAMILY_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  set(vendor_name ascend_v4_${family})   # ops/ascendc_package.py vendor_name(): the one naming rule
  set(package_name ${vendor_name})

  if(NOT ASCEND_COMPUTE_UNIT)
    set(ASCEND_COMPUTE_UNIT "${AV4_OPP_SOCS}")
  endif()
  foreach(soc IN LISTS ASCEND_COMPUTE_UNIT)
    if(NOT soc IN_LIST AV4_OPP_SOCS)
      message(FATAL_ERROR "ASCEND_COMPUTE_UNIT '${soc}' is not one our OpDefs declare (${AV4_OPP_SOCS})")
    endif()
  endforeach()
  set(ASCEND_COMPUTE_UNIT "${ASCEND_COMPUTE_UNIT}" CACHE STRING "SoCs to build kernels for" FORCE)

  if(NOT ASCEND_CANN_PACKAGE_PATH)
    set(ASCEND_CANN_PACKAGE_PATH "$ENV{ASCEND_HOME_PATH}")
  endif()
  find_package(ASC QUIET HINTS "${ASCEND_CANN_PACKAGE_PATH}/compiler/tikcpp/ascendc_kernel_cmake")
  if(NOT ASC_FOUND)
    message(FATAL_ERROR "CANN's ASC CMake package not found (looked in ASCEND_CANN_PACKAGE_PATH="
                        "'${ASCEND_CANN_PACKAGE_PATH}'/compiler/tikcpp/ascendc_kernel_cmake): source "
                        "<cann>/set_env.sh of a CANN >= 8.3 toolkit first, or pass -DASC_DIR=<dir of ASCConfig.cmake>")
  endif()
  if(NOT DEFINED ASCEND_AUTOGEN_PATH)
    set(ASCEND_AUTOGEN_PATH ${CMAKE_BINARY_DIR}/autogen)
  endif()
  file(MAKE_DIRECTORY ${ASCEND_AUTOGEN_PATH})

  npu_op_package(${package_name}
    TYPE RUN
    CONFIG
      ENABLE_SOURCE_PACKAGE True
      ENABLE_BINARY_PACKAGE True
      INSTALL_PATH ${CMAKE_BINARY_DIR}/
  )
  message(STATUS "ascend-v4: package ${package_name} (family ${family}) for ${ASCEND_COMPUTE_UNIT}")
  add_subdirectory(op_host)
  add_subdirectory(op_kernel)
endmacro()

# Absolute paths of `files` (relative ones are relative to the calling CMakeLists), each checked to exist.
function(_av4_existing_files out)
  set(result)
  foreach(f IN LISTS ARGN)
    get_filename_component(abs "${f}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT EXISTS "${abs}")
      message(FATAL_ERROR "${CMAKE_CURRENT_LIST_FILE}: source '${f}' does not exist")
    endif()
    list(APPEND result "${abs}")
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

# av4_opp_host(SOURCES ...): the host side of a family. SOURCES are every host translation unit (OpDefs with
# InferShape/InferDataType, tiling functions, the plain-C++ tiling they call): the OpDefs reference the tiling
# functions, so the code generator, the graph prototype library and the tiling library all get the full list.
function(av4_opp_host)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "av4_opp_host: SOURCES is empty")
  endif()
  _av4_existing_files(srcs ${ARG_SOURCES})
  set(incs ${AV4_FAMILY_DIR}/op_host ${AV4_FAMILY_DIR}/op_kernel)

  # aclnn single-op API + graph prototype sources, generated from the OpDefs
  npu_op_code_gen(
    SRC ${srcs}
    PACKAGE ${package_name}
    OUT_DIR ${ASCEND_AUTOGEN_PATH}
    COMPILE_OPTIONS -I${AV4_FAMILY_DIR}/op_host -I${AV4_FAMILY_DIR}/op_kernel
  )
  file(GLOB aclnn_srcs ${ASCEND_AUTOGEN_PATH}/aclnn_*.cpp)
  file(GLOB proto_srcs ${ASCEND_AUTOGEN_PATH}/op_proto.cc)
  file(GLOB fallback_srcs ${ASCEND_AUTOGEN_PATH}/fallback_*.cpp)
  set_source_files_properties(${aclnn_srcs} ${proto_srcs} ${fallback_srcs} PROPERTIES GENERATED TRUE)

  npu_op_library(cust_opapi ACLNN ${aclnn_srcs})
  npu_op_library(cust_op_proto GRAPH ${srcs} ${proto_srcs})
  npu_op_library(cust_optiling TILING ${srcs} ${fallback_srcs})
  foreach(t cust_opapi cust_op_proto cust_optiling)
    target_include_directories(${t} PRIVATE ${incs})
    target_compile_options(${t} PRIVATE -fvisibility=hidden)
  endforeach()
  npu_op_package_add(${package_name} LIBRARY cust_optiling cust_opapi cust_op_proto)
endfunction()

# av4_opp_kernels(OPS <OpType> <file> ...): one kernel source per op type, in the calling folder (op_kernel/). Only
# the kernel directory ships in the source package and is compiled from there, so the family's op_kernel/ files and
# the shared kernel headers (ops/ascendc_common/op_kernel/*.h) are staged into one directory of the build tree,
# <build>/kernel_src/op_kernel/ (copied again whenever a source changes); that is the source base the ASC package
# compiles and packages. Each source is compiled per SoC in ASCEND_COMPUTE_UNIT and per dtype combination of its
# OpDef.
function(av4_opp_kernels)
  cmake_parse_arguments(ARG "" "" "OPS" ${ARGN})
  list(LENGTH ARG_OPS n)
  math(EXPR odd "${n} % 2")
  if(n EQUAL 0 OR odd)
    message(FATAL_ERROR "av4_opp_kernels: OPS takes pairs <OpType> <kernel file>, got '${ARG_OPS}'")
  endif()
  file(RELATIVE_PATH kernel_dir ${AV4_FAMILY_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  set(stage ${CMAKE_BINARY_DIR}/kernel_src)
  file(REMOVE_RECURSE ${stage})
  file(GLOB own ${CMAKE_CURRENT_SOURCE_DIR}/*.h ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  file(GLOB shared ${AV4_OPP_SHARED_KERNEL_DIR}/*.h)
  foreach(f IN LISTS own shared)
    get_filename_component(name ${f} NAME)
    if(EXISTS ${stage}/${kernel_dir}/${name})
      message(FATAL_ERROR "av4_opp_kernels: ${name} exists in ${CMAKE_CURRENT_SOURCE_DIR} and in "
                          "${AV4_OPP_SHARED_KERNEL_DIR}: rename one (they would share one directory in the package)")
    endif()
    configure_file(${f} ${stage}/${kernel_dir}/${name} COPYONLY)
  endforeach()
  math(EXPR last "${n} - 1")
  foreach(i RANGE 0 ${last} 2)
    math(EXPR j "${i} + 1")
    list(GET ARG_OPS ${i} op_type)
    list(GET ARG_OPS ${j} kernel_file)
    _av4_existing_files(unused ${kernel_file})
    npu_op_kernel_sources(ascendc_kernels OP_TYPE ${op_type} KERNEL_DIR ${kernel_dir} KERNEL_FILE ${kernel_file})
  endforeach()
  npu_op_kernel_library(ascendc_kernels
    SRC_BASE ${stage}/
    TILING_LIBRARY cust_optiling
  )
  npu_op_package_add(${package_name} LIBRARY ascendc_kernels)
endfunction()
