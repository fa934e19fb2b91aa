from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ElementType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ELEMENT_TYPE_UNSPECIFIED: _ClassVar[ElementType]
    ELEMENT_TYPE_INT32: _ClassVar[ElementType]
    ELEMENT_TYPE_FLOAT32: _ClassVar[ElementType]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_IDLE: _ClassVar[JobState]
    JOB_STATE_SWITCH_DOWN: _ClassVar[JobState]

class SwitchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWITCH_STATE_UNSPECIFIED: _ClassVar[SwitchState]
    SWITCH_STATE_UP: _ClassVar[SwitchState]
    SWITCH_STATE_DOWN: _ClassVar[SwitchState]
ELEMENT_TYPE_UNSPECIFIED: ElementType
ELEMENT_TYPE_INT32: ElementType
ELEMENT_TYPE_FLOAT32: ElementType
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_IDLE: JobState
JOB_STATE_SWITCH_DOWN: JobState
SWITCH_STATE_UNSPECIFIED: SwitchState
SWITCH_STATE_UP: SwitchState
SWITCH_STATE_DOWN: SwitchState

class JobSpec(_message.Message):
    __slots__ = ("name", "workers", "element_type", "elements_per_packet", "slots", "workers_at")
    class WorkersAtEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_PER_PACKET_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    workers: int
    element_type: ElementType
    elements_per_packet: int
    slots: int
    workers_at: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., workers: _Optional[int] = ..., element_type: _Optional[_Union[ElementType, str]] = ..., elements_per_packet: _Optional[int] = ..., slots: _Optional[int] = ..., workers_at: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("switch_id", "slot_base", "slots", "parent_switch_id")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_BASE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    switch_id: str
    slot_base: int
    slots: int
    parent_switch_id: str
    def __init__(self, switch_id: _Optional[str] = ..., slot_base: _Optional[int] = ..., slots: _Optional[int] = ..., parent_switch_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "wire_job_id", "spec", "state", "placements", "joined_ranks", "create_time", "owner", "state_detail", "last_active_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    JOINED_RANKS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    wire_job_id: int
    spec: JobSpec
    state: JobState
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    joined_ranks: _containers.RepeatedScalarFieldContainer[int]
    create_time: float
    owner: str
    state_detail: str
    last_active_time: float
    def __init__(self, job_id: _Optional[str] = ..., wire_job_id: _Optional[int] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., joined_ranks: _Optional[_Iterable[int]] = ..., create_time: _Optional[float] = ..., owner: _Optional[str] = ..., state_detail: _Optional[str] = ..., last_active_time: _Optional[float] = ...) -> None: ...

class Switch(_message.Message):
    __slots__ = ("switch_id", "data_address", "agent_address", "info", "free_slots", "parent_switch_id", "state", "last_error", "health_failures", "jobs")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    switch_id: str
    data_address: str
    agent_address: str
    info: SwitchInfo
    free_slots: int
    parent_switch_id: str
    state: SwitchState
    last_error: str
    health_failures: int
    jobs: int
    def __init__(self, switch_id: _Optional[str] = ..., data_address: _Optional[str] = ..., agent_address: _Optional[str] = ..., info: _Optional[_Union[SwitchInfo, _Mapping]] = ..., free_slots: _Optional[int] = ..., parent_switch_id: _Optional[str] = ..., state: _Optional[_Union[SwitchState, str]] = ..., last_error: _Optional[str] = ..., health_failures: _Optional[int] = ..., jobs: _Optional[int] = ...) -> None: ...

class SwitchInfo(_message.Message):
    __slots__ = ("kind", "total_slots", "min_elements_per_packet", "max_elements_per_packet", "max_workers", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MIN_ELEMENTS_PER_PACKET_FIELD_NUMBER: _ClassVar[int]
    MAX_ELEMENTS_PER_PACKET_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    total_slots: int
    min_elements_per_packet: int
    max_elements_per_packet: int
    max_workers: int
    version: str
    def __init__(self, kind: _Optional[str] = ..., total_slots: _Optional[int] = ..., min_elements_per_packet: _Optional[int] = ..., max_elements_per_packet: _Optional[int] = ..., max_workers: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("counters", "drops", "jobs")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.ScalarMap[str, int]
    drops: _containers.ScalarMap[str, int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobCounters]
    def __init__(self, counters: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Mapping[str, int]] = ..., jobs: _Optional[_Iterable[_Union[JobCounters, _Mapping]]] = ...) -> None: ...

class JobCounters(_message.Message):
    __slots__ = ("wire_job_id", "counters", "drops", "joined", "epoch", "job_id", "switch_id", "running")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    wire_job_id: int
    counters: _containers.ScalarMap[str, int]
    drops: _containers.ScalarMap[str, int]
    joined: int
    epoch: int
    job_id: str
    switch_id: str
    running: bool
    def __init__(self, wire_job_id: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Mapping[str, int]] = ..., joined: _Optional[int] = ..., epoch: _Optional[int] = ..., job_id: _Optional[str] = ..., switch_id: _Optional[str] = ..., running: _Optional[bool] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id", "force")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    force: bool
    def __init__(self, job_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JoinJobRequest(_message.Message):
    __slots__ = ("job_id", "rank", "address", "replace")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    address: str
    replace: bool
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class JoinJobResponse(_message.Message):
    __slots__ = ("switch_address", "wire_job_id", "worker_id", "slot_base", "slots", "elements_per_packet", "total_workers", "multicast_group", "key", "worker_address")
    SWITCH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_BASE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_PER_PACKET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_GROUP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    switch_address: str
    wire_job_id: int
    worker_id: int
    slot_base: int
    slots: int
    elements_per_packet: int
    total_workers: int
    multicast_group: str
    key: int
    worker_address: str
    def __init__(self, switch_address: _Optional[str] = ..., wire_job_id: _Optional[int] = ..., worker_id: _Optional[int] = ..., slot_base: _Optional[int] = ..., slots: _Optional[int] = ..., elements_per_packet: _Optional[int] = ..., total_workers: _Optional[int] = ..., multicast_group: _Optional[str] = ..., key: _Optional[int] = ..., worker_address: _Optional[str] = ...) -> None: ...

class LeaveJobRequest(_message.Message):
    __slots__ = ("job_id", "rank", "address")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    address: str
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class LeaveJobResponse(_message.Message):
    __slots__ = ("left",)
    LEFT_FIELD_NUMBER: _ClassVar[int]
    left: bool
    def __init__(self, left: _Optional[bool] = ...) -> None: ...

class RegisterSwitchRequest(_message.Message):
    __slots__ = ("switch_id", "data_address", "agent_address", "info", "parent_switch_id")
    SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    PARENT_SWITCH_ID_FIELD_NUMBER: _ClassVar[int]
    switch_id: str
    data_address: str
    agent_address: str
    info: SwitchInfo
    parent_switch_id: str
    def __init__(self, switch_id: _Optional[str] = ..., data_address: _Optional[str] = ..., agent_address: _Optional[str] = ..., info: _Optional[_Union[SwitchInfo, _Mapping]] = ..., parent_switch_id: _Optional[str] = ...) -> None: ...

class ListSwitchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSwitchesResponse(_message.Message):
    __slots__ = ("switches",)
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    switches: _containers.RepeatedCompositeFieldContainer[Switch]
    def __init__(self, switches: _Optional[_Iterable[_Union[Switch, _Mapping]]] = ...) -> None: ...

class StreamStatsRequest(_message.Message):
    __slots__ = ("interval_seconds", "job_ids")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, interval_seconds: _Optional[float] = ..., job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsSnapshot(_message.Message):
    __slots__ = ("time", "jobs", "switch_counters", "job_counters")
    class SwitchCountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Counters
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Counters, _Mapping]] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    SWITCH_COUNTERS_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNTERS_FIELD_NUMBER: _ClassVar[int]
    time: float
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    switch_counters: _containers.MessageMap[str, Counters]
    job_counters: _containers.RepeatedCompositeFieldContainer[JobCounters]
    def __init__(self, time: _Optional[float] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., switch_counters: _Optional[_Mapping[str, Counters]] = ..., job_counters: _Optional[_Iterable[_Union[JobCounters, _Mapping]]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstallJobRequest(_message.Message):
    __slots__ = ("wire_job_id", "workers", "total_workers", "slot_base", "slots", "elements_per_packet", "worker_addresses", "multicast_group", "parent_address", "parent_worker_id", "key")
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SLOT_BASE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_PER_PACKET_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_GROUP_FIELD_NUMBER: _ClassVar[int]
    PARENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    wire_job_id: int
    workers: int
    total_workers: int
    slot_base: int
    slots: int
    elements_per_packet: int
    worker_addresses: _containers.RepeatedScalarFieldContainer[str]
    multicast_group: str
    parent_address: str
    parent_worker_id: int
    key: int
    def __init__(self, wire_job_id: _Optional[int] = ..., workers: _Optional[int] = ..., total_workers: _Optional[int] = ..., slot_base: _Optional[int] = ..., slots: _Optional[int] = ..., elements_per_packet: _Optional[int] = ..., worker_addresses: _Optional[_Iterable[str]] = ..., multicast_group: _Optional[str] = ..., parent_address: _Optional[str] = ..., parent_worker_id: _Optional[int] = ..., key: _Optional[int] = ...) -> None: ...

class InstallJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveJobRequest(_message.Message):
    __slots__ = ("wire_job_id",)
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    wire_job_id: int
    def __init__(self, wire_job_id: _Optional[int] = ...) -> None: ...

class RemoveJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetWorkersRequest(_message.Message):
    __slots__ = ("wire_job_id", "worker_addresses")
    WIRE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    wire_job_id: int
    worker_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, wire_job_id: _Optional[int] = ..., worker_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class SetWorkersResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetCountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
